"""config.task_file_problem: a task name with a lone surrogate (from a JSON "\\udc80" escape or os.fsdecode of a
non-UTF-8 name) is refused by name, not by a UnicodeEncodeError from the length check."""

from __future__ import annotations

import pytest

from mtl_lora_vl.config import check_task_file_names, task_file_problem


def test_a_lone_surrogate_is_refused_by_name():
    assert "UTF-8" in task_file_problem("vqa\udc80")
    with pytest.raises(ValueError, match=r"predictions: task name\(s\) \['vqa\\udc80'\] contain a character"):
        check_task_file_names(["vqa\udc80", "ok"], "predictions", "rename it")


def test_multibyte_names_at_the_byte_limit():
    assert task_file_problem("é" * 64) is None and task_file_problem("é" * 64 + "a") is not None
