"""``eval --adapter A --tasks other.toml`` without ``--data-root``: the adapter's own tasks are read from the folder
it records, but a spec file naming one of them was refused ("pass the folder that holds them with --data-root DIR")
though the adapter records where that task's files are. Both now read the recorded folder (``--data-root`` moves
either), and the folder read is recorded in eval.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.evaluation.evaluate import evaluate_adapter

HEAD = 'name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\nformat = "jsonl"\n'


def _trained(tmp: Path) -> tuple[Path, Path]:
    """An adapter trained on files under ``tmp/data``, and a spec file of new test data for its task."""
    data = tmp / "data"
    data.mkdir()
    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(data / f"{colour}.png")
    (data / "rows.jsonl").write_text("".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n"
                                             for c in ("red", "blue") * 3))
    (data / "later.jsonl").write_text("".join(json.dumps({"image": "red.png", "label": "red"}) + "\n"
                                              for _ in range(5)))
    spec = tmp / "colours.toml"
    spec.write_text(HEAD + '[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
    run = tmp / "run"
    assert train_main(["--tasks", str(spec), "--data-root", str(data), "--steps", "1", "--batch-size", "2",
                       "--device", "cpu", "--workers", "0", "--skip-zero-shot", "--out", str(run)]) == 0
    later = tmp / "later.toml"
    later.write_text(HEAD + '[data.test]\nfile = "later.jsonl"\n')
    return run / "adapter", later


def test_a_spec_file_of_the_adapters_task_reads_the_folder_the_adapter_records(tmp_path, caplog):
    adapter, later = _trained(tmp_path)
    with caplog.at_level(logging.INFO, logger="mtl_lora_vl"):
        evaluate_adapter(adapter, tasks=str(later), out=tmp_path / "ev", device="cpu")   # was refused
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["colours"]
    assert r["n"] == 5 and r["data_root"] == str((tmp_path / "data").absolute())
    assert f"the folder the adapter records for task 'colours' ({tmp_path / 'data'})" in caplog.text
    # as the adapter's own task is read without --data-root
    evaluate_adapter(adapter, tasks="colours", out=tmp_path / "ev2", device="cpu")
    assert json.loads((tmp_path / "ev2" / "eval.json").read_text())["tasks"]["colours"]["n"] == 6
    # --data-root still moves it
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("red.png", "later.jsonl"):
        (moved / f).write_bytes((tmp_path / "data" / f).read_bytes())
    (moved / "later.jsonl").write_text((moved / "later.jsonl").read_text() * 2)
    evaluate_adapter(adapter, tasks=str(later), data_root=str(moved), out=tmp_path / "ev3", device="cpu")
    r = json.loads((tmp_path / "ev3" / "eval.json").read_text())["tasks"]["colours"]
    assert r["n"] == 10 and r["data_root"] == str(moved.absolute())


def test_a_spec_file_whose_recorded_folder_is_gone_is_told_to_give_data_root(tmp_path, capsys):
    adapter, later = _trained(tmp_path)
    (tmp_path / "data").rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert eval_main(["--adapter", str(adapter), "--tasks", str(later), "--out", str(tmp_path / "ev"),
                      "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--tasks {later}: task 'colours' was trained on files under {tmp_path / 'data'}" in err
    assert "--data-root DIR" in err


@pytest.mark.parametrize("data_root", [None, "given"])
def test_the_adapters_own_task_and_a_spec_file_read_the_same_folder(tmp_path, data_root):
    """One run scoring both the saved task and a spec file of it is not possible (a task is named once), so the two
    runs are compared: the same folder each time."""
    adapter, later = _trained(tmp_path)
    root = str(tmp_path / "data") if data_root else None
    evaluate_adapter(adapter, tasks="colours", data_root=root, out=tmp_path / "a", device="cpu")
    evaluate_adapter(adapter, tasks=str(later), data_root=root, out=tmp_path / "b", device="cpu")
    a, b = (json.loads((tmp_path / d / "eval.json").read_text())["tasks"]["colours"]["data_root"] for d in "ab")
    assert a == b == str((tmp_path / "data").absolute())


def test_a_spec_file_of_other_data_read_under_the_recorded_folder_is_warned_of(tmp_path, caplog):
    """The recorded folder is surely right for the spec the task was trained with (said at info level); a spec of other
    data might be relative to another folder holding files of the same names, so that is said as a warning."""
    adapter, later = _trained(tmp_path)
    with caplog.at_level(logging.INFO, logger="mtl_lora_vl"):
        evaluate_adapter(adapter, tasks=str(later), out=tmp_path / "ev", device="cpu")
    said = [r for r in caplog.records if "the folder the adapter records for task 'colours'" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"], said
    assert "its [data] is not the one the task was trained on" in said[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mtl_lora_vl"):
        evaluate_adapter(adapter, tasks=str(tmp_path / "colours.toml"), out=tmp_path / "ev2", device="cpu")
    said = [r for r in caplog.records if "the folder the adapter records for task 'colours'" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"], said
