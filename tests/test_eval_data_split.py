"""eval.json and the report said only ``"split": "test"`` of a task whose ``[data.test]`` reads ``split =
"train[80%:]"`` of its files: not what was read. A task's entry now records the spec's ``split`` option beside it
(``data_split``), where its split table gives one, and the report's closing line names it."""

from __future__ import annotations

import json

from test_eval_trained_rows import HEAD, sliced_adapter

from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
from mtl_lora_vl.evaluation.report import source_line


def test_the_split_the_spec_reads_is_recorded_beside_the_split_scored(tmp_path):
    adapter, _ = sliced_adapter(tmp_path)
    evaluate_adapter(adapter, out=tmp_path / "ev", device="cpu")
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    entry = result["tasks"]["colours"]
    assert entry["split"] == "test" and entry["data_split"] == "train[80%:]"
    assert r"colours read split train\[80%:\] of its files" in (tmp_path / "ev" / "report.md").read_text()
    # test asked for, which a spec file lacks: scored on its val, and what val read is recorded
    val = tmp_path / "val.toml"
    val.write_text(HEAD + 'path = "pq"\n[data.val]\nsplit = "train[90%:]"\n')
    evaluate_adapter(adapter, tasks=str(val), out=tmp_path / "ev-val", device="cpu")
    entry = json.loads((tmp_path / "ev-val" / "eval.json").read_text())["tasks"]["colours"]
    assert entry["split"] == "val" and entry["data_split"] == "train[90%:]" and entry["n"] == 1


def test_a_table_without_split_records_none_and_older_results_still_read(tmp_path):
    adapter, _ = sliced_adapter(tmp_path)
    whole = tmp_path / "whole.toml"
    whole.write_text(HEAD + 'path = "pq"\n[data.test]\n')   # the one split the files hold, whole
    evaluate_adapter(adapter, tasks=str(whole), out=tmp_path / "ev", device="cpu")
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert "data_split" not in result["tasks"]["colours"] and result["tasks"]["colours"]["n"] == 10
    assert "read split" not in (tmp_path / "ev" / "report.md").read_text()
    assert "read split" not in source_line(result)   # an eval.json written before data_split reads as it did
