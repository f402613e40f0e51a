"""A dataset typo's did-you-mean looks at the folder it is run in only where the value could be either: ``--dataset
coco`` with a ``coco/`` here is ``--data-root``, but a built-in task's name (``--dataset vqa``) stays ``--tasks``
whatever folders the current one holds, and Hugging Face's ``--dataset-name X`` names a dataset, never a folder
(both were told ``--data-root`` where a folder of that name was here)."""

from __future__ import annotations

import pytest

from mtl_lora_vl.cli.flag_hints import builtin_task_names, closest_flag
from mtl_lora_vl.tasks.spec import available_specs

FLAGS = ["--tasks", "--data-root"]


def test_the_built_in_task_names_are_the_specs_ones():
    assert builtin_task_names() == frozenset(available_specs())
    assert {"vqa", "retrieval"} <= builtin_task_names()


@pytest.mark.parametrize("value", ["vqa", "retrieval", "vqa,retrieval", "vqa.toml"])
def test_a_built_in_task_is_a_task_beside_a_folder_of_its_name(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    for name in ("vqa", "retrieval"):
        (tmp_path / name).mkdir(exist_ok=True)
    assert closest_flag("--dataset", FLAGS, value=value) == "--tasks"
    assert closest_flag(f"--dataset={value}", FLAGS) == "--tasks"
    assert closest_flag("--dataset", ["--task"], value=value) == "--task"   # (export's)


def test_a_dataset_name_is_a_task_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    assert closest_flag("--dataset-name", FLAGS, value="coco") == "--tasks"
    assert closest_flag("--dataset_name", FLAGS, value="coco") == "--tasks"
    # (kept: another name that is a folder here is the folder; a folder's word, a path: a folder)
    assert closest_flag("--dataset", FLAGS, value="coco") == "--data-root"
    assert closest_flag("--data-dir", FLAGS, value="vqa") == "--data-root"
    assert closest_flag("--dataset-name", FLAGS, value="/data/coco") == "--data-root"
