"""A task whose file rows a reader took for another kind's is refused when the kind is built, naming the row and the
fix: a JSONL row with a 'question' is a VQA row whatever else it holds, so a classification task on rows with
'question', 'answers' and 'label' said "the training split has no class names; give them as options.class_names"
(and, given them, "has label None; expected a class index"), and a retrieval task on them trained on the questions
as its captions without a word."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image
from vl_tiny import tiny_backbone

from mtl_lora_vl.data.readers import read_split
from mtl_lora_vl.tasks import build_kind, resolve_tasks


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def _read(tmp_path, rows: list[dict]):
    for i in range(len(rows)):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", **r}) + "\n"
                                                 for i, r in enumerate(rows)))
    return read_split("jsonl", tmp_path, file="rows.jsonl")


QUESTIONS = [{"question": "what color is it?", "answers": [c] * 3, "label": c} for c in ("red", "blue")]


def test_classification_on_vqa_rows_names_the_row_read_as_vqa(tmp_path, clip):
    split = _read(tmp_path, QUESTIONS)
    spec = resolve_tasks("caption_cls")[0]
    for given in ([], ["red", "blue"]):   # (given the names it asked for, it said "label None")
        with pytest.raises(ValueError, match=r"task 'caption_cls': training example 0 \(image '0.png'\) was read as "
                                             r"a VQA row \(question 'what color is it\?'.*a classification task's "
                                             "rows give 'label' and no 'question'"):
            build_kind(dataclasses.replace(spec, options={**spec.options, "class_names": given}), split, clip)


def test_retrieval_on_vqa_rows_is_refused_not_trained_on_the_questions(tmp_path, clip):
    split = _read(tmp_path, QUESTIONS)
    with pytest.raises(ValueError, match=r"task 'retrieval': training example 0 \(image '0.png'\) was read as a VQA "
                                         "row .*a retrieval task's rows give 'text', 'caption' or 'captions'"):
        build_kind(resolve_tasks("retrieval")[0], split, clip)


def test_rows_of_the_kind_still_build(tmp_path, clip):
    labels = _read(tmp_path, [{"label": "red"}, {"label": "blue"}])
    assert build_kind(resolve_tasks("caption_cls")[0], labels, clip).class_names == ["blue", "red"]
    captions = _read(tmp_path, [{"caption": "a red square"}, {"caption": "a blue square"}])
    assert build_kind(resolve_tasks("retrieval")[0], captions, clip).name == "retrieval"
    assert build_kind(resolve_tasks("vqa")[0], _read(tmp_path, QUESTIONS), clip).name == "vqa"


# COCO-style caption rows that also carry a 'question' field (no answers): read as VQA rows all the same, whose text is
# the question; answers alone did not tell them from caption rows, so retrieval trained on the questions silently
UNANSWERED = [{"caption": f"a {c} square", "question": "what is it?", "label": c} for c in ("red", "blue")]


def test_retrieval_on_unanswered_question_rows_is_refused_not_trained_on_the_questions(tmp_path, clip):
    split = _read(tmp_path, UNANSWERED)
    assert [ex.text for ex in split.examples] == ["what is it?"] * 2   # (the reader's rule, which the message names)
    with pytest.raises(ValueError, match=r"task 'retrieval': training example 0 \(image '0.png'\) was read as a VQA "
                                         r"row \(question 'what is it\?' and no answers; a row that gives 'question' "
                                         "is read as VQA"):
        build_kind(resolve_tasks("retrieval")[0], split, clip)


def test_classification_on_unanswered_question_rows_names_them_vqa_rows_not_caption_rows(tmp_path, clip):
    with pytest.raises(ValueError, match=r"task 'caption_cls': training example 0 \(image '0.png'\) was read as a VQA "
                                         r"row \(question 'what is it\?' and no answers"):
        build_kind(resolve_tasks("caption_cls")[0], _read(tmp_path, UNANSWERED), clip)


def _shared_table(tmp_path):
    """A datasets table of VQA questions and captions, one row per image, shared by a VQA spec and a caption spec."""
    datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package")
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(2)]
    text = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "caption": text, "question": text,
                                  "answers": datasets.Sequence(text)})
    datasets.Dataset.from_dict({"image": images, "caption": ["a red square", "a blue square"],
                                "question": ["what color is it?"] * 2, "answers": [["red"], ["blue"]]},
                               features=features).save_to_disk(tmp_path / "shared")
    return lambda **columns: read_split("hf_datasets", tmp_path, path="shared", **columns)


def test_a_shared_table_is_told_the_columns_mapping_that_reads_it_as_the_tasks_rows(tmp_path, clip):
    read = _shared_table(tmp_path)
    spec = resolve_tasks("retrieval")[0]
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, format="hf_datasets"))
    with pytest.raises(ValueError, match=r"read as a VQA row .*: map only the task's own columns in its \[data\] "
                                         r"section, e.g. columns = \{image = \"...\", caption = \"...\"\}, leaving "
                                         "'question' out"):
        build_kind(spec, read(), clip)
    mapped = read(columns={"image": "image", "caption": "caption"})   # the fix the message gives
    assert [ex.text for ex in mapped.examples] == ["a red square", "a blue square"]
    assert build_kind(spec, mapped, clip).name == "retrieval"


def test_a_reader_of_another_kinds_format_is_not_told_to_leave_a_column_out(tmp_path, clip):
    spec = resolve_tasks("retrieval")[0]
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, format="vqav2"))
    with pytest.raises(ValueError, match=r"read as a VQA row .*: the vqav2 reader reads rows of another kind; give the "
                                         "task data of its own kind") as e:
        build_kind(spec, _read(tmp_path, QUESTIONS), clip)
    assert "column" not in str(e.value)
