"""Messages that name tasks read in the singular for one task ("task 'vqa' has") and the plural for several
("tasks 'a', 'b' have"): about fifteen said "task(s) ['vqa'] have" of one task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mtl_lora_vl.benchmark.bench import check_splits
from mtl_lora_vl.config import check_task_file_names
from mtl_lora_vl.data.loader import MultiTaskLoader
from mtl_lora_vl.data.sampler import MultiTaskBatchSampler
from mtl_lora_vl.evaluation.adapter_tasks import saved_task_roots
from mtl_lora_vl.io.exports import _task_list
from mtl_lora_vl.wording import agree, tasks_named


def test_tasks_named_agrees_with_the_number_of_names():
    assert tasks_named(["vqa"], "have") == "task 'vqa' has"
    assert tasks_named(["a", "b"], "have") == "tasks 'a', 'b' have"
    assert tasks_named(["vqa"]) == "task 'vqa'" and tasks_named([0, 1]) == "tasks 0, 1"
    assert tasks_named(["x"], "end with '.'", "task name") == "task name 'x' ends with '.'"
    assert [agree(v, 1) for v in ("are", "were", "do", "cannot name a file", "hold")] == \
        ["is", "was", "does", "cannot name a file", "holds"]
    # not the plural plus "s" ("matchs", "musts", "carrys", "fixs" before)
    assert [agree(v, 1) for v in ("match", "must be", "carry", "fix", "pass", "go", "play", "cannot")] == \
        ["matches", "must be", "carries", "fixes", "passes", "goes", "plays", "cannot"]
    assert agree("match", 2) == "match" and tasks_named(["a"], "push") == "task 'a' pushes"
    assert tasks_named(list("abcdefgh"), "are").endswith("'f' (and 2 more) are")


def test_one_task_and_several_in_the_messages():
    with pytest.raises(ValueError, match=r"^task 1 has no examples \(tasks by their position in sizes\)"):
        MultiTaskBatchSampler([4, 0], 2)
    with pytest.raises(ValueError, match=r"^tasks 0, 1 have no examples"):
        MultiTaskBatchSampler([0, 0], 2)
    with pytest.raises(ValueError, match=r"MultiTaskLoader: task 'vqa' is not in the adapter's tasks \['other'\]"):
        MultiTaskLoader([SimpleNamespace(name="vqa")], [None], None, batch_size=1, adapter_tasks=["other"])
    kinds = [SimpleNamespace(name="cap", generative=True), SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    with pytest.raises(ValueError, match=r"task 'cap' runs through a language model but tasks 'a', 'b' do not"):
        MultiTaskLoader(kinds, [None] * 3, None, batch_size=1)
    with pytest.raises(ValueError, match=r"^export_lora: task 'vqa' named more than once"):
        _task_list(["vqa", "vqa"])
    with pytest.raises(ValueError, match=r"^--tasks: tasks 'a', 'b' are named more than once"):
        check_splits([SimpleNamespace(name=n) for n in ("a", "b", "a", "b")])


def test_file_name_problems_read_in_the_singular_for_one_name():
    with pytest.raises(ValueError, match=r"^x: task name 'a/b' contains '/' \(no file name"):
        check_task_file_names(["a/b", "ok"], "x", "fix")
    with pytest.raises(ValueError, match=r"^x: task names 'a/b', 'c/d' contain '/' \(no file name"):
        check_task_file_names(["a/b", "c/d"], "x", "fix")
    with pytest.raises(ValueError, match=r"^x: task name 'CON' names a device Windows reserves"):
        check_task_file_names(["CON"], "x", "fix")
    with pytest.raises(ValueError, match=r"^x: task name 'a\.' ends with '\.' or a space"):
        check_task_file_names(["a."], "x", "fix")
    with pytest.raises(ValueError, match=r"^x: task name None cannot name a file, fix"):
        check_task_file_names([None], "x", "fix")


def test_trained_folders_that_are_gone_read_in_the_plural_for_several(tmp_path):
    """Two recorded folders gone read "which are no longer folders; put them back", one run per folder (one
    --data-root is read by every task): it said "under A, B, which is no longer a folder; put it back"."""
    specs = [SimpleNamespace(name=n, data=SimpleNamespace(source="files")) for n in ("a", "b", "c")]
    here = tmp_path / "here"
    here.mkdir()
    gone_a, gone_b = str(tmp_path / "gone_a"), str(tmp_path / "gone_b")
    lp = SimpleNamespace(specs={s.name: s for s in specs}, doc={"data_roots": {"a": gone_a, "b": gone_b, "c": gone_a}})
    with pytest.raises(ValueError) as e:
        saved_task_roots(lp, specs, None)
    assert str(e.value) == (
        f"tasks 'a', 'b', 'c' were trained on files under {gone_a}, {gone_b}, which are no longer folders; put them "
        "back, or score each folder's tasks on the folder it moved to, one run each: --tasks a,c --data-root DIR, "
        "--tasks b --data-root DIR (--data-root is read by every task scored)")
    lp.doc["data_roots"] = {"a": gone_a, "b": str(here), "c": gone_a}
    with pytest.raises(ValueError, match=r"^tasks 'a', 'c' were trained on files under .*gone_a, which is no longer "
                                         r"a folder; put it back, or score them on the folder it moved to with "
                                         r"--tasks a,c --data-root DIR \(--data-root"):
        saved_task_roots(lp, specs, None)
