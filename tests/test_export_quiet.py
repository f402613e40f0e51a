"""What ``export`` says besides what it wrote: no third-party progress bar off a terminal, no processor note where the
source folder's processor already reads as the adapter's images were read (helper 513)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from qwen_tiny import save_tiny_qwen2vl
from test_qwen2vl_backbone import _tiny_sized
from transformers.utils import logging as hf_logging

import mtl_lora_vl as mlv
import mtl_lora_vl.io.exports as exports
from mtl_lora_vl.backbones.image_record import set_area
from mtl_lora_vl.backbones.loading import load_backbone
from mtl_lora_vl.cli.export import export_main


def _llava_adapter(tmp_path):
    bb = load_backbone("builtin-llava")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    return mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin-llava"})


@pytest.fixture
def hub_group_setting():
    """A user's own huggingface_hub setting for one group of bars, which must outlive the export."""
    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    hub.disable_progress_bars("some_library")
    yield hub
    hub.progress_bar_states.pop("some_library", None)


def test_a_merged_export_shows_no_writing_model_shards_bar_off_a_terminal(tmp_path, capfd, hub_group_setting):
    """transformers 5's save_pretrained drew "Writing model shards: 100%|...| 1/1" on export --format merged's stderr
    (into log files too, and at -q), where the package shows its bars (and transformers' "Loading weights") only on
    a terminal. transformers' switch is put back as it was, the hub's per-group settings too."""
    ad = _llava_adapter(tmp_path)
    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "o")]) == 0
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()   # (put back: nothing process-wide left behind)
    assert hub_group_setting.progress_bar_states.get("some_library") is False


def test_a_merged_export_keeps_the_bar_on_a_terminal(tmp_path, capfd, monkeypatch):
    """On a terminal transformers' bar stays, as the package's own bars and its "Loading weights" do."""
    ad = _llava_adapter(tmp_path)
    monkeypatch.setattr(exports, "interactive", lambda: True)
    capfd.readouterr()
    assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "o")]) == 0
    assert "Writing model shards" in capfd.readouterr().err


def _qwen_model(folder):
    bb = load_backbone(f"hf:{folder}")
    return mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))


def test_a_qwen2vl_lora_export_gives_no_processor_note_where_the_source_processor_reads_that_area(tmp_path, caplog):
    """The tiny Qwen2-VL folder's processor reads 1024 to 1024 pixels, the area the backbone read: export_lora still
    warned 'load the base model's processor with min_pixels=1024, max_pixels=1024 ... whatever its own files say'
    (and wrote it into the README), though that processor, loaded as it is, reads exactly so. A processor that
    allows more is still told."""
    model = _qwen_model(save_tiny_qwen2vl(tmp_path / "q"))
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, "a", tmp_path / "peft", format="peft")
    assert "min_pixels" not in caplog.text, caplog.text
    assert "min_pixels" not in (out / "README.md").read_text()
    caplog.clear()
    wider = _tiny_sized(tmp_path / "w", longest_edge=1_000_000)   # reads 1024 to 448² here; its files: up to 10⁶
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(_qwen_model(wider), "a", tmp_path / "peft_w", format="peft")
    assert "min_pixels=1024, max_pixels=200704" in caplog.text
    assert "min_pixels=1024, max_pixels=200704" in (out / "README.md").read_text()


def test_an_older_adapters_area_note_is_left_out_where_the_source_processor_reads_within_it(tmp_path, caplog):
    """An adapter saved before the area read was recorded (its cap asked for, 4096; loaded on a bare model) exported
    from a model whose folder's processor reads at most 1024 pixels: 'load ... with max_pixels=4096 at most' was
    said of a processor already below it. A folder whose processor reads more is still told."""
    for name, edge, told in (("small", 1024, False), ("large", 1_000_000, True)):
        model = _qwen_model(_tiny_sized(tmp_path / name, longest_edge=edge))
        set_area(model, 4096)   # (as load_adapter of such an adapter records it: no bounds)
        caplog.clear()
        with caplog.at_level("WARNING"):
            mlv.export_lora(model, "a", tmp_path / f"peft_{name}", format="peft")
        assert ("max_pixels=4096 at most" in caplog.text) is told, (name, caplog.text)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root, commit=HUB_COMMIT, seed=0, longest_edge=None):
    """A hub cache holding the tiny Qwen2-VL as snapshot ``commit`` of ``org/tiny-qwen`` (``refs/main`` naming it);
    ``seed``: its weights', ``longest_edge``: its processor's max_pixels where given."""
    repo = root / "models--org--tiny-qwen"
    snapshot = save_tiny_qwen2vl(repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    if longest_edge is not None:
        path = snapshot / "processor_config.json"
        cfg = json.loads(path.read_text())
        cfg["image_processor"]["size"]["longest_edge"] = longest_edge
        path.write_text(json.dumps(cfg))
    return snapshot


@pytest.mark.parametrize(("cached", "told"), [
    ("commit", False), ("one snapshot", False), ("wider", True), ("not cached", True),
    ("two snapshots, main", False), ("two snapshots, no main", True), ("other weights", True),
    ("other weights, the model's in the next cache", False), ("no safetensors", True), ("broken link", True)])
def test_a_hub_id_qwen2vl_models_note_is_read_off_its_snapshot_in_the_local_hub_cache(tmp_path, monkeypatch, caplog,
                                                                                       cached, told):
    """A Qwen2-VL loaded by hub id (``name_or_path`` 'org/tiny-qwen') was told 'load the base model's processor with
    min_pixels=1024, max_pixels=1024' though that id's snapshot in the local hub cache, its files, reads exactly so
    (7797b07 read the folder a model was loaded from only). The snapshot is read where it is known for sure: the
    commit the config records, else the id's one snapshot, else ``main``'s, holding the model's weights. A snapshot
    whose processor reads more, an id not cached, two snapshots and no commit or ``main``, or a snapshot of other
    weights: told. Helper 546: ``main`` among older snapshots (no commit recorded, as transformers 5.18+ records
    none) was told though ``main``'s is what ``from_pretrained(id)`` loads; a first cache whose one snapshot holds
    other weights was not passed over for the next cache holding the model's; a snapshot with no safetensors file,
    or whose weights file is a broken link, passed the weights check as "nothing to compare"."""
    hub = tmp_path / "hub"
    hub.mkdir()
    folder = save_tiny_qwen2vl(tmp_path / "q")
    if cached.startswith("two snapshots"):   # (an older revision whose processor reads more, then main's)
        _hub_cache(hub, longest_edge=1_000_000)
        _hub_cache(hub, commit="f" * 40)
        if cached.endswith("no main"):
            (hub / "models--org--tiny-qwen" / "refs" / "main").unlink()
    elif cached != "not cached":
        wider = 1_000_000 if cached == "wider" else None
        snapshot = _hub_cache(hub, seed=1 if cached == "other weights" else 0, longest_edge=wider)
        weights = snapshot / "model.safetensors"
        assert weights.is_file()
        if cached in ("no safetensors", "broken link"):
            weights.unlink()
        if cached == "broken link":   # (as huggingface_hub links it, its blob gone)
            weights.symlink_to(Path("..", "..", "blobs", "0" * 64))
    if cached.endswith("next cache"):   # (the cache huggingface_hub read at import, then the environment's)
        first = tmp_path / "first"
        _hub_cache(first, seed=1)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(first))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _qwen_model(folder)
    model.name_or_path = model.config.name_or_path = "org/tiny-qwen"   # as from_pretrained("org/tiny-qwen") sets them
    model.config._commit_hash = HUB_COMMIT if cached == "commit" else None
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, "a", tmp_path / "peft", format="peft")
    assert ("min_pixels=1024" in caplog.text) is told, caplog.text
    assert ("min_pixels=1024" in (out / "README.md").read_text()) is told
