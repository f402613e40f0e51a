"""Parquet files of different columns read as one table are refused in our words (``hf_loading.refuse_mixed_columns``);
``datasets`` logged its own ERROR line ("Failed to read file ... with error CastError: Couldn't cast ...", a dozen
lines of schemas) above that refusal. Its parquet builder's lines are held back while the files are read, and let
out unless the read ends in our refusal."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.hf_table import held_logs
from mtl_lora_vl.data.readers import read_split

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")


def test_files_of_different_columns_are_refused_without_datasets_error_line_before(tmp_path, capfd, caplog):
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path / "root"
    (root / "mixed").mkdir(parents=True)
    for i, column in enumerate(("caption", "text")):
        datasets.Dataset.from_dict({"image": [Image.new("RGB", (9, 9))], column: ["a picture"]}).to_parquet(
            str(root / "mixed" / f"train-0000{i}-of-00002.parquet"))
    capfd.readouterr()
    with caplog.at_level(logging.INFO), pytest.raises(DataFormatError, match="have different columns"):
        read_split("hf_datasets", root, path="mixed", split="train", cache_dir=str(tmp_path / "cache"))
    err = capfd.readouterr().err
    assert "Failed to read file" not in err and "CastError" not in err   # (was: datasets' ERROR line, on stderr)
    assert not [r for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.ERROR]
    assert logging.getLogger("datasets.packaged_modules.parquet.parquet").propagate   # (as it was)


def test_held_lines_are_let_out_unless_the_read_ends_in_a_refusal_of_ours(caplog):
    log = logging.getLogger("mtl_test.held")
    with caplog.at_level(logging.INFO), pytest.raises(ValueError), held_logs("mtl_test.held"):
        log.error("one")
        assert not caplog.records   # (held)
        raise ValueError("not ours")
    assert [r.getMessage() for r in caplog.records] == ["one"]
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(DataFormatError), held_logs("mtl_test.held"):
        log.error("two")
        raise DataFormatError("ours")
    with caplog.at_level(logging.INFO), held_logs("mtl_test.held"):
        log.error("three")
    assert [r.getMessage() for r in caplog.records] == ["three"] and log.propagate and not log.handlers
