"""A misspelt key of a spec's [head], [options], [generative] or [data] tables is named with the key it was likely
meant to be, as a misspelt top-level field is; --tasks written with spaces is told to use commas, and a spec path
holding a comma is named rather than split."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_lora_vl.tasks import SpecError, load_spec, resolve_tasks
from mtl_lora_vl.wording import comma_hint

_DATA = '[data]\nformat = "jsonl"\n{shared}[data.train]\n{train}\n[data.val]\nfile = "val.jsonl"\n'


def _spec(tmp_path: Path, kind: str, tail: str = "", shared: str = "", train: str = 'file = "train.jsonl"') -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(f'kind = "{kind}"\n' + _DATA.format(shared=shared, train=train) + tail)
    return path


@pytest.mark.parametrize(("kind", "tail", "field", "meant"), [
    ("vqa", "[options]\nanswer_vocab = 100\n", "options.answer_vocab", "answer_vocab_size"),
    ("vqa", '[generative]\nprompts = "{image} q: {question} a:"\n', "generative.prompts", "prompt"),
    ("classification", "[head]\nlabel_smooting = 0.1\n", "head.label_smooting", "label_smoothing"),
])
def test_a_misspelt_table_key_names_the_known_key(tmp_path, kind, tail, field, meant):
    with pytest.raises(SpecError, match=rf"mine\.toml: field '{field}': .*\(did you mean '{meant}'\?\)"):
        load_spec(_spec(tmp_path, kind, tail))


def test_a_misspelt_reader_option_names_the_option(tmp_path):
    with pytest.raises(SpecError, match=r"field 'data.train': format 'jsonl' does not take option\(s\) 'fiel' "
                                        r"\('fiel': did you mean 'file'\?\); its options are: file"):
        load_spec(_spec(tmp_path, "vqa", train='fiel = "train.jsonl"'))
    with pytest.raises(SpecError, match=r"field 'data': .*'strickt': did you mean 'strict'\?"):
        load_spec(_spec(tmp_path, "vqa", shared="strickt = true\n"))


def test_a_key_like_none_gets_no_guess(tmp_path):
    with pytest.raises(SpecError, match=r"known keys \(answer_vocab_size, filter_by_type\), got 'zzz'$"):
        load_spec(_spec(tmp_path, "vqa", "[options]\nzzz = 1\n"))


def test_a_metric_listed_twice_is_named(tmp_path):
    path = _spec(tmp_path, "vqa", "")
    path.write_text('metrics = ["vqa_accuracy", "per_type", "vqa_accuracy"]\n' + path.read_text())
    with pytest.raises(SpecError, match=r"field 'metrics\[2\]': expected each metric once \('vqa_accuracy' is "
                                        r"metrics\[0\] too\)"):
        load_spec(path)


@pytest.mark.parametrize(("tasks", "fix"), [("vqa retrieval", "vqa,retrieval"), ("vqa; retrieval", "vqa,retrieval"),
                                           ("vqa,caption_cls retrieval", "caption_cls,retrieval")])
def test_tasks_separated_by_spaces_are_told_to_use_commas(tasks, fix):
    """'vqa retrieval' was told "did you mean 'retrieval'?", a fix that drops a task."""
    with pytest.raises(SpecError, match=rf"\(task names are separated by commas: --tasks {fix}\)") as e:
        resolve_tasks(tasks)
    assert "did you mean" not in str(e.value)


def test_a_task_name_spelt_with_a_space_is_not_told_to_use_commas():
    """'caption cls' (for caption_cls) was told "--tasks caption,cls", two tasks that do not exist; also by name in
    the wording helper that eval and export share (with the adapter's tasks)."""
    with pytest.raises(SpecError, match=r"unknown task 'caption cls' \(did you mean 'caption_cls'\?\)") as e:
        resolve_tasks("vqa,caption cls")
    assert "separated by commas" not in str(e.value)
    assert comma_hint("my task  two", "--task", ["vqa", "My_Task_Two"]) == ""
    assert comma_hint("vqa cls", "--task", ["vqa", "cls"]) == " (task names are separated by commas: --task vqa,cls)"


def test_a_spec_path_with_a_comma_is_named_not_split(tmp_path, monkeypatch):
    """'my,data/a.toml' was read as the tasks 'my' and 'data/a.toml': "unknown task 'my'"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my,data").mkdir()
    spec = _spec(tmp_path / "my,data", "vqa")
    with pytest.raises(SpecError, match=r"'my,data/mine\.toml' has a ',' in its path.*copy or link it"):
        resolve_tasks("vqa,my,data/mine.toml")
    assert load_spec(spec).kind == "vqa"   # (the file itself is a good spec)
