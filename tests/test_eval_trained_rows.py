"""``eval --adapter A --tasks my.toml`` scored an adapter on rows it trained on without a word: trained on
``split = "train[:80%]"`` of a parquet folder, scored on ``train[50%:]`` of the same files, its adapted scores were
partly training scores. The spec's own train / val check never saw it (my.toml has no [data.train]); eval now
compares the split it scores with the one the adapter trained the task on, by the same rule, on resolved files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attach import attach
from mtl_lora_vl.backbones import builtin_dir, load_backbone
from mtl_lora_vl.config import MTLLoRAConfig
from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
from mtl_lora_vl.tasks import build_kind, load_spec

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")
pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")

HEAD = ('name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\nformat = "hf_datasets"\n'
        'cache_dir = "cache"\n')
SAID = "reads rows (the part(s) ['train[50%:]']) the adapter trained the task on (the [data.train] of "


def sliced_adapter(tmp: Path, rows: int = 10, train: str = "train[:80%]") -> tuple[Path, Path]:
    """An adapter of task 'colours' (untrained: built and saved as train saves it) on ``train`` (``train[:80%]``) of
    the parquet folder ``data/pq`` of ``rows`` rows, and the data folder."""
    data = tmp / "data"
    (data / "pq").mkdir(parents=True)
    labels = ["red", "blue"] * (rows // 2)
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 16), c) for c in labels], "label": labels}) \
        .to_parquet(str(data / "pq" / "train-0.parquet"))
    spec = tmp / "colours.toml"
    spec.write_text(HEAD + f'path = "pq"\n[data.train]\nsplit = "{train}"\n[data.test]\nsplit = "train[80%:]"\n')
    specs = {"colours": load_spec(spec)}
    bb = load_backbone("builtin")
    kinds = {t: build_kind(s, s.load_split("train", data), bb) for t, s in specs.items()}
    heads = {t: k.build_head(bb) for t, k in kinds.items()}
    attach(bb.model, MTLLoRAConfig(tasks=list(specs), r=2))
    adapter = mlv.save_adapter(bb.model, tmp / "adapter", heads=heads, task_specs=specs, kinds=kinds,
                               base={"backbone": "builtin"}, data_roots={"colours": data})
    return adapter, data


def _scored(tmp: Path, adapter: Path, caplog, test: str, path: str = "pq", data_root: Path | None = None) -> list:
    mine = tmp / "my.toml"
    mine.write_text(HEAD + f'path = "{path}"\n[data.test]\n{test}\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        evaluate_adapter(adapter, tasks=str(mine), data_root=None if data_root is None else str(data_root),
                         out=tmp / "ev", overwrite=True, device="cpu")
    return [r.getMessage() for r in caplog.records if "the adapter trained the task on" in r.getMessage()]


def test_a_spec_file_scoring_rows_the_adapter_trained_on_is_warned_of_once(tmp_path, caplog):
    adapter, _ = sliced_adapter(tmp_path)
    said = _scored(tmp_path, adapter, caplog, 'split = "train[50%:]"')
    assert len(said) == 1, said
    assert said[0].startswith(f"--tasks {tmp_path / 'my.toml'}: task 'colours' is scored on its [data.test] (split "
                              "'train[50%:]')")
    assert SAID + f"{tmp_path / 'adapter' / 'tasks' / 'colours.toml'}: split 'train[:80%]'" in said[0]
    assert "partly training scores" in said[0]
    # the whole table (no split) reads every training row
    said = _scored(tmp_path, adapter, caplog, "")
    assert len(said) == 1 and "no split: the whole table" in said[0] and "['train[:80%]']" in said[0], said


def test_rows_of_their_own_or_other_files_are_not_warned_of(tmp_path, caplog):
    adapter, data = sliced_adapter(tmp_path)
    assert not _scored(tmp_path, adapter, caplog, 'split = "train[80%:]"')   # the held-out rows
    shutil.copytree(data / "pq", data / "other")
    assert not _scored(tmp_path, adapter, caplog, 'split = "train[50%:]"', path="other")   # other files
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)   # the same names under another --data-root: other files
    assert not _scored(tmp_path, adapter, caplog, 'split = "train[50%:]"', data_root=moved)


def test_the_same_files_named_another_way_are_warned_of(tmp_path, caplog):
    """The paths are compared resolved: an absolute path to the training files reads them as ``pq`` did."""
    adapter, data = sliced_adapter(tmp_path)
    said = _scored(tmp_path, adapter, caplog, 'split = "train[50%:]"', path=str(data / "pq"))
    assert len(said) == 1 and SAID in said[0], said


def test_slices_whose_shared_rows_the_length_decides_are_warned_of_once_read(tmp_path, caplog):
    """Trained on ``train[:80%]`` of 10 rows (rows 0-7): ``train[-3:]`` (rows 7-9) and ``train[7:]`` read row 7, which
    only the split's length tells (a bound from the end; rows beside percents), so names alone never warned;
    ``train[-2:]`` (rows 8-9) shares none."""
    adapter, _ = sliced_adapter(tmp_path)
    for test in ("train[-3:]", "train[7:]"):
        said = _scored(tmp_path, adapter, caplog, f'split = "{test}"')
        assert len(said) == 1, (test, said)
        assert f"reads rows (the part(s) ['{test}']) the adapter trained the task on" in said[0], said
        assert "partly training scores" in said[0]
    assert not _scored(tmp_path, adapter, caplog, 'split = "train[-2:]"')


def test_slices_rounded_two_ways_are_decided_on_the_length_read(tmp_path, caplog):
    """Trained on ``train[:50%]`` of 150 rows (rows 0-74): ``train[50%:](pct1_dropremainder)`` (rows 50-149: it rounds
    50% of 150 down to row 50) shares rows 50-74; ``train[75%:](pct1_dropremainder)`` (rows 75-149) shares none of
    150 rows, and was warned of by names alone (its rows meet the training rows on a split of 199)."""
    adapter, _ = sliced_adapter(tmp_path, rows=150, train="train[:50%]")
    said = _scored(tmp_path, adapter, caplog, 'split = "train[50%:](pct1_dropremainder)"')
    assert len(said) == 1 and "(the part(s) ['train[50%:](pct1_dropremainder)'])" in said[0], said
    assert not _scored(tmp_path, adapter, caplog, 'split = "train[75%:](pct1_dropremainder)"')
