"""Task specs, the kind registry, and each kind's head, loss and evaluation on tiny backbones."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskCollate, TaskDataset, to_device
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.evaluation.report import scored_line
from mtl_lora_vl.metrics import caption_scores, normalize_answer
from mtl_lora_vl.tasks import (
    SpecError,
    TaskKind,
    available_kinds,
    available_specs,
    build_kind,
    get_kind,
    load_spec,
    register_kind,
    resolve_tasks,
)
from mtl_lora_vl.tasks import registry as registry_mod
from mtl_lora_vl.tasks.captioning import caption_references, caption_token_loss
from mtl_lora_vl.tasks.classification import ClassifierHead
from mtl_lora_vl.tasks.nlvr import PairHead
from mtl_lora_vl.tasks.retrieval import RetrievalHead, multi_positive_infonce, retrieval_texts
from mtl_lora_vl.tasks.vqa import VQAHead

BUILTIN = ("vqa", "retrieval", "caption_cls", "captioning")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("coca"), coca=True)


def _world(spec, split, n):
    return world.build_split(spec.data.options.get("world_kind", spec.kind), split, n=n, seed=0)


def _batch(kind, split, backbone, n):
    """A collated, device-ready batch of the first ``n`` rows of ``split`` for one task."""
    ds = TaskDataset(kind, split, backbone.image_size)
    rows = [dict(ds[i], task_id=0) for i in range(n)]
    batch = MultiTaskCollate([kind.name], [kind.uses_text], backbone.tokenizer)(rows)
    batch = to_device(batch, "cpu", torch.float32, backbone)
    view = dict(batch["tasks"][kind.name])
    view.update(images=batch["images"], tokens=batch["tokens"])
    return view


def _train_steps(kind, head, backbone, view, steps=6, lr=3e-3):
    params = [p for p in [*backbone.model.parameters(), *head.parameters()] if p.requires_grad]
    saved = [p.detach().clone() for p in backbone.model.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    backbone.model.train()
    for _ in range(steps):
        img = backbone.encode_image(view["images"])
        txt = backbone.encode_text(view["tokens"]) if kind.uses_text else None
        loss = kind.loss(head, backbone, view, img, txt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    backbone.model.eval()
    with torch.no_grad():   # leave the shared module-scoped backbone as it was
        for p, s in zip(backbone.model.parameters(), saved):
            p.copy_(s)
    return losses


# ---------------------------------------------------------------------------------------------- specs


def test_builtin_specs_resolve_by_name():
    assert set(BUILTIN) <= set(available_specs())
    specs = resolve_tasks(",".join(BUILTIN))
    assert [s.name for s in specs] == list(BUILTIN)
    assert [s.kind for s in specs] == ["vqa", "retrieval", "classification", "captioning"]
    vqa = specs[0]
    assert vqa.data.source == "builtin" and set(vqa.data.splits) == {"train", "val", "test"}
    assert vqa.options["answer_vocab_size"] >= 2 and vqa.templates and vqa.eval_split == "val"
    assert resolve_tasks(["vqa", " retrieval "])[1].name == "retrieval"


def test_user_spec_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('kind = "classification"\ntemplates = ["a {} thing"]\n[data]\nsource = "builtin"\n'
                    '[data.train]\nn = 5\n')
    spec = load_spec(str(path))
    assert spec.name == "mine" and spec.kind == "classification" and spec.source_file == path.resolve()
    assert spec.templates == ("a {} thing",) and spec.data.splits["train"] == {"n": 5}
    assert spec.head == {"label_smoothing": 0.0}          # kind defaults filled in
    both = resolve_tasks(f"vqa,{path}")
    assert [s.name for s in both] == ["vqa", "mine"]
    assert len(spec.load_split("train").examples) == 5


def test_unknown_and_duplicate_tasks(tmp_path):
    with pytest.raises(SpecError, match="unknown task 'nope'.*caption_cls"):
        resolve_tasks("vqa,nope")
    for typo, meant in (("VQA", "vqa"), ("caption", "captioning"), ("retreival", "retrieval")):
        with pytest.raises(SpecError, match=f"unknown task '{typo}' \\(did you mean '{meant}'\\?\\)"):
            resolve_tasks(typo)
    with pytest.raises(SpecError, match="given twice"):
        resolve_tasks("vqa,vqa")
    copy = tmp_path / "other.toml"
    copy.write_text(Path(load_spec("vqa").source_file).read_text())   # declares name = "vqa"
    with pytest.raises(SpecError, match="'vqa' is given twice"):
        resolve_tasks(["vqa", copy])
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="no tasks"):
        resolve_tasks(" , ")


def test_packaged_specs_come_first(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "builtin_tasks").mkdir(parents=True)
    (pkg / "builtin_tasks" / "vqa.toml").write_text(
        'kind = "vqa"\ndescription = "from the wheel"\n[data]\nsource = "builtin"\n')
    monkeypatch.setattr(importlib.resources, "files", lambda name: pkg)
    assert load_spec("vqa").description == "from the wheel"
    assert "retrieval" in available_specs()                # the checkout's tasks/ still count


GOOD = '[data]\nsource = "builtin"\n'

MALFORMED = [
    # (spec text, field named in the error, what the error says was expected)
    ('kind = "vqa"\ncolour = 1\n' + GOOD, "'colour'", "one of the known fields"),
    (GOOD, "'kind'", "the field is missing"),
    ('kind = "segmentation"\n' + GOOD, "'kind'", "one of ['captioning', 'classification'"),
    ('kind = 3\n' + GOOD, "'kind'", "a string"),
    ('kind = "vqa"\nloss_weight = "big"\n' + GOOD, "'loss_weight'", "a positive number"),
    ('kind = "vqa"\n' + GOOD + '[head]\nquestion_weight = nan\n', "'head.question_weight'", "a finite number"),
    ('kind = "retrieval"\n' + GOOD + '[head]\nmax_logit_scale = inf\n', "'head.max_logit_scale'", "a finite number"),
    ('kind = "vqa"\nloss_weight = -1\n' + GOOD, "'loss_weight'", "a positive number"),
    ('kind = "vqa"\nname = "a b"\n' + GOOD, "'name'", "a task name"),
    ('kind = "vqa"\ntemplates = ["no placeholder"]\n' + GOOD, "'templates[0]'", "exactly one '{}'"),
    ('kind = "vqa"\ntemplates = []\n' + GOOD, "'templates'", "at least one prompt template"),
    ('kind = "vqa"\nmetrics = ["bleu4"]\n' + GOOD, "'metrics[0]'", "one of the vqa metrics"),
    ('kind = "vqa"\nmetrics = "vqa_accuracy"\n' + GOOD, "'metrics'", "a list of metric names"),
    ('kind = "vqa"\n', "'data'", "it is missing"),
    ('kind = "vqa"\n[data]\nformat = "parquet"\n', "'data.format'", "one of ['vqav2'"),
    ('kind = "vqa"\n[data]\nsource = "builtin"\nformat = "jsonl"\n', "'data'", "not both"),
    ('kind = "vqa"\n[data]\nsource = "web"\n', "'data.source'", '"builtin"'),
    ('kind = "vqa"\n[data]\nsource = "builtin"\nfile = "x"\n', "'data.file'", "built-in data keys"),
    ('kind = "vqa"\n[data]\nsource = "builtin"\n[data.train]\nn = 0\n', "'data.train.n'", "a positive integer"),
    ('kind = "vqa"\n[data]\nsource = "builtin"\n[data.val]\nsize = 3\n', "'data.val.size'", "one of ['n']"),
    ('kind = "vqa"\n[data]\nformat = "jsonl"\n[data.val]\nfile = "v.jsonl"\n', "'data.train'",
     "the training split"),
    ('kind = "vqa"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "t.jsonl"\n', "'data.val'",
     "for evaluation"),
    ('kind = "vqa"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "t.jsonl"\n[data.validation]\nfile = "v.jsonl"\n',
     "'data.validation'", "(did you mean [data.val]?)"),   # it blamed data.train: "does not take 'validation'"
    ('kind = "vqa"\n' + GOOD + '[head]\nwidth = 3\n', "'head.width'", "one of the known keys"),
    ('kind = "vqa"\n' + GOOD + '[head]\nquestion_weight = "x"\n', "'head.question_weight'", "a number"),
    ('kind = "vqa"\n' + GOOD + '[options]\nanswer_vocab_size = 2.5\n', "'options.answer_vocab_size'",
     "an integer"),
    ('kind = "vqa"\n' + GOOD + '[options]\nanswer_vocab_size = 1\n', "'options.answer_vocab_size'",
     "an integer >= 2"),
    ('kind = "retrieval"\n' + GOOD + '[options]\nks = [0]\n', "'options.ks'", "positive integers"),
    ('kind = "retrieval"\n' + GOOD + '[head]\nlearn_temperature = 1\n', "'head.learn_temperature'",
     "a boolean"),
    ('kind = "captioning"\n' + GOOD + '[options]\nbeam_size = 0\n', "'options.beam_size'", "an integer >= 1"),
    ('kind = "classification"\n' + GOOD + '[head]\nlabel_smoothing = 1.5\n', "'head.label_smoothing'",
     "in [0, 1)"),
    ('kind = "retrieval"\nmetrics = ["i2t_r5"]\n' + GOOD + '[options]\nks = [1, 2]\n', "'metrics[0]'",
     "'i2t_r2', 't2i_r1'"),   # the metrics a spec may list follow its ks (r5 is not computed with ks = [1, 2])
    ('kind = "vqa"\n[data]\nsource = "builtin"\nworld_kind = "pretrain"\n', "'data.world_kind'",
     "task kinds (retrieval, vqa"),   # pretrain has no val/test: it failed after training
    ('kind = "classification"\n' + GOOD + '[options]\nclass_names = ["red", "blue", "red"]\n',
     "'options.class_names'", "distinct class names (['red'] repeated)"),   # both scored 0 (ties count against)
    ('kind = "classification"\n' + GOOD + '[options]\nclass_names = ["red", "red "]\n',
     "'options.class_names'", "distinct class names (['red'] repeated)"),   # "red " is the class "red" in the data
    ('kind = "classification"\n' + GOOD + '[options]\nclass_names = ["red", " "]\n',
     "'options.class_names'", "a list of non-empty class names"),
    ('name = "' + "t" * 65 + '"\nkind = "vqa"\n' + GOOD, "'name'", "64 characters at most"),   # tasks/<name>.* files
]


def test_retrieval_metrics_follow_its_ks(tmp_path):
    """With ks = [1, 2] the spec could not list i2t_r2, and the default metrics named r5/r10, never computed."""
    path = tmp_path / "r.toml"
    path.write_text('kind = "retrieval"\n' + GOOD + '[options]\nks = [1, 2]\n')
    assert load_spec(path).metrics == ("mean_recall", "i2t_r1", "i2t_r2", "t2i_r1", "t2i_r2")
    path.write_text('kind = "retrieval"\nmetrics = ["mean_recall", "t2i_r2"]\n' + GOOD + '[options]\nks = [1, 2]\n')
    assert load_spec(path).metrics == ("mean_recall", "t2i_r2")
    # a k given twice was refused as 'metrics[3]', a field the spec never wrote: it counts once
    path.write_text('kind = "retrieval"\n' + GOOD + '[options]\nks = [5, 1, 5]\n')
    assert load_spec(path).metrics == ("mean_recall", "i2t_r5", "i2t_r1", "t2i_r5", "t2i_r1")


def test_the_first_metric_a_spec_lists_that_can_head_the_report_is_its_headline(tmp_path):
    """metrics = ["t2i_r1"] still headed the report (and the benchmark's averages) with mean_recall. A breakdown
    (per_type, per_class) or CIDEr (not a fraction in [0, 1]) cannot head it: the next listed metric, else the
    kind's default, does."""
    from mtl_lora_vl.tasks import get_kind

    def headline(kind: str, metrics: str) -> str:
        path = tmp_path / f"{kind}.toml"
        path.write_text(f'kind = "{kind}"\nmetrics = {metrics}\n' + GOOD)
        return get_kind(kind).headline(load_spec(path))

    assert headline("retrieval", '["t2i_r1", "mean_recall"]') == "t2i_r1"
    assert headline("classification", '["per_class", "mean_per_class", "top1"]') == "mean_per_class"
    assert headline("captioning", '["cider"]') == "bleu4"
    assert headline("captioning", '["cider", "bleu4"]') == "bleu4"
    assert headline("vqa", '["per_type"]') == "vqa_accuracy"
    assert headline("retrieval", '[]') == "mean_recall"    # the headline alone (adapters saved so still load)
    path = tmp_path / "default.toml"
    path.write_text('kind = "retrieval"\n' + GOOD)
    assert get_kind("retrieval").headline(load_spec(path)) == "mean_recall"


def test_a_spec_saved_with_a_byte_order_mark_reads(tmp_path):
    """Windows editors save UTF-8 with a BOM: 'not valid TOML: Invalid statement (at line 1, column 1)'."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ('kind = "vqa"\n' + GOOD).encode())
    assert load_spec(path).kind == "vqa"


@pytest.mark.parametrize("text,fld,expected", MALFORMED, ids=[m[1] + ":" + m[2][:20] for m in MALFORMED])
def test_malformed_spec_names_file_field_and_expectation(tmp_path, text, fld, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg and f"field {fld}" in msg and "expected" in msg and expected in msg


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('kind = "vqa\n')
    with pytest.raises(SpecError, match=r"broken\.toml: not valid TOML"):
        load_spec(path)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("strict", '"false"', "option 'strict' of format 'jsonl' must be true or false, got 'false'"),
    ("verify", '"full"', "option 'verify' must be true, false or \"decode\", got 'full'"),
    ("class_names", '"cat,dog"', "option 'class_names' of format 'jsonl' must be a list of strings, got 'cat,dog'"),
])
def test_reader_option_values_are_checked_when_the_spec_loads(tmp_path, option, value, expected):
    # They reached the reader only after the model had loaded, as a bare ValueError or not at all ("cat,dog"
    # became the class names 'c', 'a', 't', ...; one_per_image = "false" read as true).
    path = tmp_path / "bad.toml"
    path.write_text(f'kind = "classification"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "t.jsonl"\n'
                    f'{option} = {value}\n[data.val]\nfile = "v.jsonl"\n')
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: field 'data.train': ") and expected in str(err.value)
    # the same option in the shared [data] table is that table's (it was reported under data.train)
    path.write_text(f'kind = "classification"\n[data]\nformat = "jsonl"\n{option} = {value}\n[data.train]\n'
                    'file = "t.jsonl"\n[data.val]\nfile = "v.jsonl"\n')
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: field 'data': ") and expected in str(err.value)


def test_a_task_name_taken_from_the_file_name_says_so(tmp_path):
    path = tmp_path / "vqa.v2.toml"
    path.write_text('kind = "vqa"\n' + GOOD)
    with pytest.raises(SpecError, match=r"vqa\.v2\.toml: the task name is taken from the file name .*'vqa\.v2' is "
                                        r"not a task name.*add name = \"\.\.\.\" to the spec or rename the file"):
        load_spec(path)
    path.write_text('kind = "vqa"\nname = "vqa_v2"\n' + GOOD)
    assert load_spec(path).name == "vqa_v2"


def test_file_spec_reads_under_the_data_root(tmp_path, caplog):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["cat", "dog", "cat"]):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "img" / f"{i}.png")
        rows.append(json.dumps({"image": f"img/{i}.png", "label": label}))
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    spec_path = tmp_path / "pets.toml"
    spec_path.write_text('kind = "classification"\n[data]\nformat = "jsonl"\n'
                         '[data.train]\nfile = "train.jsonl"\n[data.test]\nfile = "train.jsonl"\n')
    with caplog.at_level("WARNING"):
        spec = load_spec(spec_path)
    assert spec.data.format == "jsonl" and spec.eval_split == "test"
    # a one-split dataset read by both (or a copied file name): trained and scored on the same rows, silently
    assert "[data.test] reads the same rows as [data.train]" in caplog.text
    for test_table in ('file = "./train.jsonl"\none_per_image = true', 'file = "train.jsonl"\nstrict = true'):
        caplog.clear()   # the same file spelt otherwise, or with options that do not choose rows, was not caught
        other = tmp_path / "pets2.toml"
        other.write_text('kind = "classification"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "train.jsonl"\n'
                         f'[data.test]\n{test_table}\n')
        with caplog.at_level("WARNING"):
            load_spec(other)
        assert "[data.test] reads the same rows as [data.train]" in caplog.text, test_table
    with pytest.raises(SpecError, match="--data-root"):
        spec.load_split("train")
    with pytest.raises(SpecError, match=r"no 'val' split"):
        spec.load_split("val", root)
    split = spec.load_split("train", root)
    assert split.class_names == ["cat", "dog"] and [e.label for e in split.examples] == [0, 1, 0]
    home = Path.home()   # a data root under ~ (the readers expand it; the spec refused it as "not a folder")
    rel = os.path.relpath(root, home)
    assert len(spec.load_split("train", f"~/{rel}").examples) == 3
    bad = dataclasses.replace(spec, data=dataclasses.replace(spec.data, options={"colour": 1}))
    with pytest.raises(SpecError, match="rejected the options"):
        bad.load_split("train", root)


def test_coco_alias(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('kind = "retrieval"\n[data]\nformat = "coco"\n[data.train]\nannotations = "a.json"\n'
                 '[data.val]\nannotations = "b.json"\n')
    assert load_spec(p).data.format == "coco_captions"


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_kinds_and_refuses_unknown_or_clashing():
    assert available_kinds() == ["captioning", "classification", "nlvr", "retrieval", "vqa"]
    with pytest.raises(KeyError, match="unknown task kind 'nope'.*'vqa'"):
        get_kind("nope")
    vqa_cls = get_kind("vqa")
    with pytest.raises(ValueError, match="already registered"):
        register_kind("vqa")(type("Other", (vqa_cls,), {}))


def test_a_new_kind_is_one_decorated_class():
    try:
        @register_kind("toy_kind")
        class Toy(get_kind("classification")):
            headline_metric = "top1"

        assert get_kind("toy_kind") is Toy and Toy.kind == "toy_kind" and "toy_kind" in available_kinds()
        assert issubclass(Toy, TaskKind)
    finally:
        registry_mod._KINDS.pop("toy_kind", None)


# ---------------------------------------------------------------------------------------------- kinds


def test_vqa_vocab_targets_head_and_zero_shot(clip):
    spec = load_spec("vqa")
    train, val = _world(spec, "train", 12), _world(spec, "val", 6)
    kind = build_kind(spec, train, clip)
    counts = Counter(normalize_answer(a) for e in train.examples for a in e.answers)
    assert kind.answers == sorted(counts, key=lambda a: (-counts[a], a))     # most frequent first
    ex = train.examples[0]
    target = kind.soft_targets(ex.answers)
    canon = kind.answer_index[ex.meta["answer"]]
    assert target[canon] > 0 and float(target.max()) <= 1.0
    head = kind.build_head(clip)
    zs = kind.predict(clip, None, val.examples, batch_size=4, device="cpu")
    ad = kind.predict(clip, head, val.examples, batch_size=4, device="cpu")
    assert zs == ad                                          # the head at init is the zero-shot rule

    class Ramp(torch.nn.Module):   # logits rising (or falling) with the answer index
        def __init__(self, sign: float):
            super().__init__()
            self.sign = sign

        def forward(self, img, q):
            return self.sign * torch.arange(len(kind.answers), dtype=torch.float32).expand(img.shape[0], -1)

    allowed = [kind.answer_mask(kind.filter_type(e)).nonzero().flatten() for e in val.examples]
    last, first = ([kind.answers[int(f(a))] for a in allowed] for f in (torch.max, torch.min))
    assert last != first                                      # some question allows several answers
    assert kind.predict(clip, Ramp(1.0), val.examples, batch_size=4, device="cpu") == last    # the head's logits,
    assert kind.predict(clip, Ramp(-1.0), val.examples, batch_size=4, device="cpu") == first  # masked by type
    metrics = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert 0.0 <= metrics["vqa_accuracy"] <= 1.0 and metrics["n"] == len(val.examples)
    types = {e.question_type for e in val.examples}
    assert {f"vqa_accuracy/{t}" for t in types} <= set(metrics)
    losses = _train_steps(kind, head, clip, _batch(kind, train, clip, 8))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_vqa_warns_that_three_answer_questions_score_at_most_two_thirds(clip, caplog):
    """With exactly three human answers the official leave-one-out formula tops out at 0.667 even for a
    prediction every human gave: a user's 3-answer data read as a model scoring 2/3 of what it does."""
    spec = load_spec("vqa")
    kind = build_kind(spec, _world(spec, "train", 12), clip)
    val = _world(spec, "val", 4)
    kind.check_eval_split(val)     # the built-in world's ten answers: nothing to say
    assert "three answers" not in caplog.text
    three = [dataclasses.replace(e, answers=e.answers[:3]) for e in val.examples[:2]]
    kind.check_eval_split(Split(three + val.examples[2:]))
    assert f"2 of its {len(val.examples)} evaluation questions have exactly three answers" in caplog.text
    assert "at most 0.667" in caplog.text


def test_vqa_loss_ignores_rows_without_vocab_answers(clip):
    spec = dataclasses.replace(load_spec("vqa"), options={"answer_vocab_size": 2})
    kind = build_kind(spec, _world(spec, "train", 10), clip)
    head = kind.build_head(clip)
    img, q = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1), torch.randn(3, 32)
    zero = kind.loss(head, clip, {"targets": torch.zeros(3, 2)}, img, q)
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="question embeddings"):
        kind.loss(head, clip, {"targets": torch.zeros(3, 2)}, img, None)
    # a mean over rows (those without a vocabulary answer add 0): the mean of two halves' losses is the whole
    # batch's, as DDP's and --accumulate's averaging assume (a mean over answered rows made it 1.61 vs 1.00)
    img, q = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1), torch.randn(4, 32)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.3, 1.0]])   # halves answer 1 and 2 rows
    whole = kind.loss(head, clip, {"targets": targets}, img, q)
    halves = [kind.loss(head, clip, {"targets": targets[i:i + 2]}, img[i:i + 2], q[i:i + 2]) for i in (0, 2)]
    torch.testing.assert_close(whole, sum(halves) / 2)


def test_classification_counts_ties_against_the_true_class_in_every_metric(clip, monkeypatch):
    spec = load_spec("caption_cls")
    train, val = _world(spec, "train", 12), _world(spec, "val", 8)
    kind = build_kind(spec, train, clip)
    n_cls = len(kind.class_names)
    tied = torch.zeros(len(val.examples), n_cls)   # every class ties: no sample is ranked first
    monkeypatch.setattr(kind, "logits", lambda *a, **k: tied)
    m = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert m["top1"] == 0.0 and m["mean_per_class"] == 0.0   # argmax gave ties to class 0: per-class 1.0 there
    labels = torch.tensor([ex.label for ex in val.examples])
    clear = F.one_hot(labels, n_cls).float()               # the true class alone on top
    monkeypatch.setattr(kind, "logits", lambda *a, **k: clear)
    m = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert m["top1"] == 1.0 and m["mean_per_class"] == 1.0


def test_retrieval_temperature_learns_from_a_pretrained_clips_cap():
    from mtl_lora_vl.tasks.retrieval import RetrievalHead

    head = RetrievalHead(min(100.003, 100.0))   # a pretrained CLIP's logit scale: at the cap (above it in fp32)
    head.scale.backward()                       # a loss that wants a lower scale: the gradient passes
    assert head.log_scale.grad.item() == pytest.approx(100.0, rel=1e-5)   # (a clamp gave 0: it never learned)
    head.log_scale.grad = None
    (-head.scale).backward()                    # one that wants it higher: nothing pushes it past the cap
    assert head.log_scale.grad.item() == 0.0
    low = RetrievalHead(50.0)
    (-low.scale).backward()
    assert low.log_scale.grad.item() == pytest.approx(-50.0, rel=1e-5)
    with torch.no_grad():
        head.log_scale.fill_(5.0)               # pushed above the cap: capped, and it can come back down
    assert head.scale.item() == pytest.approx(100.0, rel=1e-5)
    head.log_scale.grad = None
    head.scale.backward()
    assert head.log_scale.grad.item() > 0


def test_vqa_questions_without_a_type_are_not_mixed_into_vqav2s_other(clip, monkeypatch):
    spec = load_spec("vqa")
    kind = build_kind(spec, _world(spec, "train", 12), clip)
    val = _world(spec, "val", 4)
    examples = [dataclasses.replace(ex, question_type=qt)
                for ex, qt in zip(val.examples, ["other", None, None, "color"])]
    monkeypatch.setattr(kind, "predict", lambda *a, **k: [ex.answers[0] for ex in examples])
    m = kind.evaluate(clip, None, Split(examples), batch_size=4, device="cpu")
    assert {k for k in m if k.startswith("vqa_accuracy/")} == {"vqa_accuracy/other", "vqa_accuracy/untyped",
                                                               "vqa_accuracy/color"}
    # each type's count (its weight in the overall score), and the report's "Scored:" line shows them (helper 125)
    assert {k: v for k, v in m.items() if k.startswith("n/")} == {"n/other": 1.0, "n/untyped": 2.0, "n/color": 1.0}
    assert m["vqa_accuracy"] == pytest.approx(sum(m[f"vqa_accuracy/{t}"] * m[f"n/{t}"] for t in
                                                  ("other", "untyped", "color")) / m["n"])
    result = {"tasks": {"vqa": {"n": m["n"], "kind": "vqa", "details": {"adapted": m}}}}
    assert scored_line(result) == "Scored: vqa 4 questions (color 1, other 1, untyped 2)."


def test_caption_references_keep_repeated_captions():
    # pycocoevalcap keeps two annotators' identical captions; they weigh twice in CIDEr's average.
    a = Example(None, "a", text="a dog runs", captions=("a dog runs", "a dog runs", "a cat sleeps"))
    rows = [Example(None, "b", text="a red car"), Example(None, "b", text="a red car"),
            Example(None, "b", text="a blue car")]
    images, refs = caption_references(Split([a, dataclasses.replace(a, text="a cat sleeps"), *rows]))
    assert [ex.image_id for ex in images] == ["a", "b"]
    assert refs == {"a": ["a dog runs", "a dog runs", "a cat sleeps"], "b": ["a red car", "a red car", "a blue car"]}


def test_caption_references_leave_blank_captions_out(caplog):
    """A hand-built split's blank reference ("", "  ") counted as an empty reference in BLEU and CIDEr (CIDEr-D 5.53
    -> 3.69 on these two images); the file readers leave blank captions out, and so do the references, warned."""
    a = Example(None, "a", captions=("a dog runs on the grass", "a dog running in a field", ""))
    b = [Example(None, "b", text="a red car parked on a street"), Example(None, "b", text="a car on the road"),
         Example(None, "b", text="  ")]
    c = Example(None, "c", captions=(" ",))
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.tasks.captioning"):
        images, refs = caption_references(Split([a, *b, c]), "cap")
    assert refs == {"a": ["a dog runs on the grass", "a dog running in a field"],
                    "b": ["a red car parked on a street", "a car on the road"], "c": []}
    assert "task 'cap': 3 reference caption(s) of the evaluation split are blank (empty or only spaces) and are " \
           "left out, as the file readers leave them out; 1 image(s) left with none are not scored" in caplog.text
    preds = {"a": "a dog runs on the grass", "b": "a red car parked on a street"}
    assert caption_scores(preds, refs)["cider"] == pytest.approx(5.5292, abs=1e-4)
    caplog.clear()
    caption_references(Split([a]))   # (no task: said once, by check_eval_split)
    assert not caplog.text


def test_caption_references_of_only_blank_captions_are_the_rows_texts():
    """An image whose captions are all blank has its rows' texts as references, as retrieval's texts and training
    (caption_of) take them and as a file reader's row (its blank captions left out: none) gives them; the image was
    left with none and not scored."""
    rows = [Example(None, "c", text="a cat sleeps", captions=("", " ")), Example(None, "c", text="a cat on a bed")]
    images, refs = caption_references(Split(rows))
    assert refs == {"c": ["a cat sleeps", "a cat on a bed"]}
    assert retrieval_texts(Split(rows))[1] == refs["c"]


def test_vqa_needs_answers(clip):
    spec = load_spec("vqa")
    with pytest.raises(ValueError, match="no training example has answers"):
        build_kind(spec, Split([Example(None, "x", text="q?")]), clip)
    with pytest.raises(ValueError, match="training split is empty"):
        build_kind(spec, Split([]), clip)


def test_classification_head_reproduces_zero_shot(clip):
    spec = load_spec("caption_cls")
    train, val = _world(spec, "train", 12), _world(spec, "val", 8)
    kind = build_kind(spec, train, clip)
    assert kind.class_names == world.class_names()
    head = kind.build_head(clip)
    zs = kind.logits(clip, None, val.examples, batch_size=4, device="cpu")
    ad = kind.logits(clip, head, val.examples, batch_size=4, device="cpu")
    assert torch.equal(zs.argmax(1), ad.argmax(1)) and torch.allclose(zs, ad)
    m = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert all(0.0 <= m[k] <= 1.0 for k in ("top1", "top5", "mean_per_class")) and m["top5"] >= m["top1"]
    assert any(k.startswith("per_class/") for k in m)
    clip.model.train()
    try:   # evaluate switches to eval mode and restores the training flags afterwards
        assert kind.evaluate(clip, head, val, batch_size=4, device="cpu") == m and clip.model.training
    finally:
        clip.model.eval()
    losses = _train_steps(kind, head, clip, _batch(kind, train, clip, 8))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_classification_bad_labels_and_names(clip):
    spec = load_spec("caption_cls")
    with pytest.raises(ValueError, match="expected a class index"):
        build_kind(spec, Split([Example(None, "x", label=99)], class_names=["a", "b"]), clip)
    with pytest.raises(ValueError, match="options.class_names"):
        build_kind(spec, Split([Example(None, "x", label=0)]), clip)
    named = dataclasses.replace(spec, options={"class_names": ["tabby cat", "puppy"]})
    assert build_kind(named, Split([Example(None, "x", label=1)], class_names=["c", "d"]), clip).class_names == [
        "tabby cat", "puppy"]


def test_classification_eval_split_missing_a_class_is_mapped_by_name(clip, tmp_path):
    """Readers number the classes each split has: a val split without "dog" numbers fox 1, training 2. Its
    labels are mapped by class name (it raised, or with as many classes scored against the wrong ones)."""
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255), "wolf": (9, 9, 9)}
    for name, c in colours.items():
        Image.new("RGB", (16, 16), c).save(tmp_path / f"{name}.png")
    rows = lambda names: "".join(json.dumps({"image": f"{n}.png", "label": n}) + "\n" for n in names)  # noqa: E731
    (tmp_path / "train.jsonl").write_text(rows(["cat", "dog", "fox"] * 2))
    (tmp_path / "val.jsonl").write_text(rows(["cat", "fox"]))
    (tmp_path / "other.jsonl").write_text(rows(["cat", "wolf"]))
    (tmp_path / "cls.toml").write_text('name = "cls"\nkind = "classification"\ntemplates = ["a {}."]\n[data]\n'
                                       'format = "jsonl"\n[data.train]\nfile = "train.jsonl"\n[data.val]\n'
                                       'file = "val.jsonl"\n[data.test]\nfile = "other.jsonl"\n')
    spec = load_spec(tmp_path / "cls.toml")
    train, val = spec.load_split("train", tmp_path), spec.load_split("val", tmp_path)
    assert val.class_names == ["cat", "fox"] and [e.label for e in val.examples] == [0, 1]
    kind = build_kind(spec, train, clip)
    seen = []
    real = kind.logits
    kind.logits = lambda bb, head, examples, **kw: (seen.extend(e.label for e in examples)
                                                    or real(bb, head, examples, **kw))
    out = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert seen == [0, 2] and set(k for k in out if k.startswith("per_class/")) == {"per_class/cat", "per_class/fox"}
    restored = build_kind(spec, None, clip, state=json.loads(json.dumps(kind.state())))  # as a saved adapter has it
    assert restored.data_class_names == ["cat", "dog", "fox"]
    assert restored.evaluate(clip, None, val, batch_size=4, device="cpu") == out
    with pytest.raises(ValueError, match=r"class\(es\) \['wolf'\] that training did not have"):
        kind.evaluate(clip, None, spec.load_split("test", tmp_path), batch_size=4, device="cpu")


def test_retrieval_texts_leave_blank_captions_out(caplog):
    """A blank caption of a hand-built evaluation split was a query of its image (ranked, counted in t2i recall);
    the file readers leave blank captions out, and so do the texts, warned once."""
    rows = [Example(None, "a", text="", captions=("a dog runs", " ")), Example(None, "b", text="a red car"),
            Example(None, "b", text="  "), Example(None, "c", text="a cat", captions=("",))]
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.tasks.retrieval"):
        images, texts, t2i = retrieval_texts(Split(rows), "ret")
    assert [ex.image_id for ex in images] == ["a", "b", "c"]
    assert texts == ["a dog runs", "a red car", "a cat"] and t2i == [0, 1, 2]
    assert "task 'ret': 3 caption(s) of the evaluation split are blank (empty or only spaces) and are left out" \
        in caplog.text   # ("a"'s blank text is not one of its texts: it has captions)


def test_retrieval_blank_captions_are_counted_as_the_texts_and_images_left_without_any_said(caplog):
    """A blank reference repeated on each row of its image is one text left out (the texts are distinct per image:
    counted 2), and an image left with no text is no image-to-text query (it stays a distractor), which the
    captioning warning says of its images and this one did not."""
    caps = ("a dog runs", " ")
    rows = [Example(None, "a", text="a dog runs", captions=caps), Example(None, "a", text="a dog", captions=caps),
            Example(None, "d", text=" "), Example(None, "d", text=" "), Example(None, "e", text="a red car")]
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.tasks.retrieval"):
        images, texts, t2i = retrieval_texts(Split(rows), "ret")
    assert texts == ["a dog runs", "a red car"] and t2i == [0, 2] and len(images) == 3
    assert "task 'ret': 2 caption(s) of the evaluation split are blank (empty or only spaces) and are left out, as " \
           "the file readers leave them out; 1 image(s) left with none are not image-to-text queries" in caplog.text


def test_retrieval_loss_eval_and_captions_per_image(clip):
    spec = load_spec("retrieval")
    train, val = _world(spec, "train", 4), _world(spec, "val", 6)
    kind = build_kind(spec, train, clip)
    images, texts, t2i = retrieval_texts(train)                       # 5 examples (captions) per image
    assert len(images) == 4 and len(texts) == len(train.examples)
    assert t2i == [i for i, im in enumerate(images) for _ in im.captions]
    images_v, texts_v, t2i_v = retrieval_texts(val)                   # one example per image + refs
    n_refs = [len(e.captions) for e in val.examples]
    assert len(images_v) == 6 and len(texts_v) == sum(n_refs) and t2i_v.count(0) == n_refs[0] > 1
    head = kind.build_head(clip)
    assert float(head.scale.detach()) == pytest.approx(float(clip.logit_scale.detach()), rel=1e-5)
    m = kind.evaluate(clip, None, val, batch_size=4, device="cpu")
    assert m["n_texts"] == sum(n_refs) and all(0.0 <= m[k] <= 1.0 for k in spec.metrics)
    assert m == kind.evaluate(clip, head, val, batch_size=4, device="cpu")   # same towers, same ranking
    losses = _train_steps(kind, head, clip, _batch(kind, train, clip, 10))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_multi_positive_infonce():
    logits = torch.randn(4, 4)
    distinct = multi_positive_infonce(logits, torch.arange(4))
    eye = torch.arange(4)
    clip_loss = 0.5 * (torch.nn.functional.cross_entropy(logits, eye) +
                       torch.nn.functional.cross_entropy(logits.t(), eye))
    assert torch.allclose(distinct, clip_loss)
    # two captions of one image: both are positives, so a perfect score on either is no loss
    big = torch.tensor([[9.0, 9.0, -9.0], [9.0, 9.0, -9.0], [-9.0, -9.0, 9.0]]) * 5
    assert float(multi_positive_infonce(big, torch.tensor([7, 7, 3]))) < 1e-6


def test_captioning_needs_a_decoder(clip):
    spec = load_spec("captioning")
    with pytest.raises(ValueError, match=r"'tiny-clip'.*CoCa"):
        build_kind(spec, _world(spec, "train", 2), clip)


def test_captioning_loss_and_decoding(coca, monkeypatch):
    spec = load_spec("captioning")
    train, val = _world(spec, "train", 3), _world(spec, "val", 3)
    kind = build_kind(spec, train, coca)
    head = kind.build_head(coca)
    assert list(head.parameters()) == [] and head.beam_size == 1
    m = kind.evaluate(coca, None, val, batch_size=2, device="cpu")
    assert 0.0 <= m["bleu4"] <= 1.0 and m["cider"] >= 0.0 and m["n_images"] == 3
    beam = build_kind(dataclasses.replace(spec, options={"max_len": 6, "beam_size": 2}), train, coca)
    seen, real = [], coca.generate
    monkeypatch.setattr(coca, "generate", lambda images, **kw: seen.append(kw) or real(images, **kw))
    caps = beam.generate(coca, beam.build_head(coca), val.examples, batch_size=3, device="cpu")
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert seen == [{"max_len": 6, "beam_size": 2}]   # the spec's decoding reaches the backbone
    losses = _train_steps(kind, head, coca, _batch(kind, train, coca, 4))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_caption_token_loss_stops_at_the_end_token():
    vocab, eos, pad = 6, 2, 0
    tokens = torch.tensor([[1, 4, 5, eos, pad, pad]])
    logits = torch.zeros(1, 5, vocab)
    logits[0, torch.arange(3), torch.tensor([4, 5, eos])] = 50.0   # right up to and including eos
    logits[0, 3:, 3] = 50.0                                        # garbage after eos: ignored
    assert float(caption_token_loss(logits, tokens, eos, pad)) < 1e-6
    # pad == eos (some HF tokenizers): the first eos still counts, the padding after it does not
    tokens2 = torch.tensor([[1, 4, 5, eos, eos, eos]])
    assert float(caption_token_loss(logits, tokens2, eos, eos)) < 1e-6


def test_caption_token_loss_is_the_mean_of_row_token_means_without_waiting_for_the_host():
    """A mean over rows of each row's token mean (as the generative path's): the mean of two halves' losses is
    the whole batch's, as DDP's and --accumulate's averaging assume (a mean over the batch's tokens was not).
    It read the mask back (`bool(valid.any())`) and indexed by it (a nonzero): GPU waits inside the step."""
    from test_training_parts import _HostReads

    torch.manual_seed(0)
    vocab, eos, pad = 7, 2, 0
    tokens = torch.tensor([[1, 4, 5, eos, pad, pad], [1, 3, 3, 6, 4, eos], [1, eos, pad, pad, pad, pad]])
    logits = torch.randn(3, 5, vocab, requires_grad=True)
    target = tokens[:, 1:]
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with _HostReads() as host:
        loss = caption_token_loss(logits, tokens, eos, pad)
    assert host.reads == []
    torch.testing.assert_close(loss, torch.stack([F.cross_entropy(logits[i][valid[i]], target[i][valid[i]])
                                                  for i in range(3)]).mean())
    torch.testing.assert_close(loss, (caption_token_loss(logits[:1], tokens[:1], eos, pad)
                                      + 2 * caption_token_loss(logits[1:], tokens[1:], eos, pad)) / 3)
    none = caption_token_loss(logits, torch.full((3, 6), pad), eos, pad)   # nothing to score: 0, with a gradient
    none.backward()
    assert float(none.detach()) == 0.0 and logits.grad is not None and not logits.grad.any()


@pytest.mark.parametrize("name", ["vqa", "caption_cls", "retrieval"])
def test_kind_rebuilt_from_saved_state_needs_no_training_data(clip, name):
    spec = load_spec(name)
    kind = build_kind(spec, _world(spec, "train", 12), clip)
    state = json.loads(json.dumps(kind.state()))  # what an adapter file keeps
    again = build_kind(spec, None, clip, state=state)
    assert again.state() == kind.state()
    val = _world(spec, "val", 6)
    torch.manual_seed(0)
    a = kind.evaluate(clip, kind.build_head(clip), val, batch_size=4, device="cpu")
    b = again.evaluate(clip, again.build_head(clip), val, batch_size=4, device="cpu")
    assert a == b
    with pytest.raises(ValueError, match="needs the training split or the state"):
        build_kind(spec, None, clip)


def test_vqa_answers_are_filtered_by_question_type(clip):
    spec = load_spec("vqa")
    train, val = _world(spec, "train", 60), _world(spec, "val", 30)
    kind = build_kind(spec, train, clip)
    majority = {}
    for ex in train.examples:
        top = Counter(normalize_answer(a) for a in ex.answers).most_common(1)[0][0]
        majority.setdefault(ex.question_type, set()).add(top)
    assert {t: {kind.answers[i] for i in ids} for t, ids in kind.type_answers.items()} == majority
    assert "yep" not in majority.get("existence", set())  # synonyms never win a question, so never compete
    preds = kind.predict(clip, None, val.examples, batch_size=8, device="cpu")
    for ex, pred in zip(val.examples, preds):
        assert pred in majority[ex.question_type], (ex.question_type, pred)
    # The loss is a softmax over each row's allowed answers only (a hand-written one; not the unmasked one).
    batch = _batch(kind, train, clip, 8)
    mask = batch["answer_mask"]
    assert mask.shape == batch["targets"].shape and not mask.all()
    head = kind.build_head(clip)
    with torch.no_grad():
        img, txt = clip.encode_image(batch["images"]), clip.encode_text(batch["tokens"])
        loss = kind.loss(head, clip, batch, img, txt)
        logits = head(img, txt)
    t = batch["targets"].float() * mask
    keep = t.sum(1) > 0
    dist = t[keep] / t[keep].sum(1, keepdim=True)
    allowed_logp = logits[keep].masked_fill(~mask[keep], float("-inf")).log_softmax(-1)
    want = -torch.where(mask[keep], dist * allowed_logp, torch.zeros(())).sum(1).mean()
    unmasked = -(dist * logits[keep].log_softmax(-1)).sum(1).mean()
    torch.testing.assert_close(loss, want)
    assert not torch.isclose(loss, unmasked)


def test_vqav2_candidates_come_from_the_question_not_from_its_answers(clip, caplog):
    """VQAv2's default question_type is the annotation's answer_type, which VQAv2 derives from the human
    answers; filtering the candidates by it let the label choose them (the same image and question, annotated
    'yes', 'red' or '3', got three different predictions). The filter now uses the question-prefix type the
    reader keeps (meta["filter_type"]), and a question without annotations the longest known prefix."""
    spec = load_spec("vqa")
    train, val = _world(spec, "train", 60), _world(spec, "val", 12)

    def vqav2(ex: Example, answers=None, annotated: bool = True) -> Example:  # as read_vqav2 makes it
        answers = ex.answers if answers is None else answers
        top = Counter(answers).most_common(1)[0][0]
        answer_type = "yes/no" if top in ("yes", "no") else "number" if top.isdigit() else "other"
        prefix = " ".join(ex.text.lower().split()[:2])   # VQAv2's question types: the question's opening words
        return dataclasses.replace(ex, answers=answers if annotated else (), question_type=answer_type if annotated
                                   else None, meta={**ex.meta, "filter_type": prefix if annotated else ""})

    kind = build_kind(spec, Split([vqav2(ex) for ex in train.examples]), clip)
    assert set(kind.type_answers) == {" ".join(ex.text.lower().split()[:2]) for ex in train.examples}
    # each row's candidates are masked on its own, so one batch of all questions per labelling is as telling as
    # one call per question (and encodes the answer prompts 4 times, not 48 times one at a time)
    n = len(val.examples)
    runs = [kind.predict(clip, None, [vqav2(ex, (a,) * 10) for ex in val.examples], batch_size=n, device="cpu")
            for a in ("yes", "red", "3")]
    runs.append(kind.predict(clip, None, [vqav2(ex, annotated=False) for ex in val.examples], batch_size=n,
                             device="cpu"))
    for ex, preds in zip(val.examples, zip(*runs, strict=True), strict=True):
        assert len(set(preds)) == 1, (ex.text, preds)   # whatever the humans answered, or none
    # An adapter saved before keyed its filter by answer type: no match any more, said once (not silently)
    state = {**kind.state(), "type_answers": {"yes/no": [0], "other": [1, 2]}}
    old = build_kind(spec, None, clip, state=state)
    with caplog.at_level("WARNING"):
        old.predict(clip, None, [vqav2(ex) for ex in val.examples[:2]], batch_size=2, device="cpu")
    assert caplog.text.count("answer filter was saved by answer type") == 1


def test_answer_typed_question_types_from_row_files_do_not_choose_the_candidates(clip, caplog, tmp_path):
    """VQAv2 converted to JSONL (or a datasets column mapped to question_type) carries VQAv2's answer_type as
    question_type: the filter then let each question's label choose its candidates. Now it is not used (said
    once); a 'filter_type' field, the question's own type, is."""
    from mtl_lora_vl.data.readers import read_split

    spec = load_spec("vqa")
    world = _world(spec, "train", 60)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "a.png")
    rows = []
    for ex in world.examples:
        top = Counter(ex.answers).most_common(1)[0][0]
        answer_type = "yes/no" if top in ("yes", "no") else "number" if top.isdigit() else "other"
        rows.append({"image": "a.png", "question": ex.text, "answers": list(ex.answers),
                     "question_type": answer_type, "prefix": " ".join(ex.text.lower().split()[:2])})
    (tmp_path / "plain.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "prefix"})
                                                    for r in rows))
    (tmp_path / "typed.jsonl").write_text("\n".join(json.dumps({**r, "filter_type": r.pop("prefix")}) for r in rows))
    with caplog.at_level("WARNING"):
        plain = build_kind(spec, read_split("jsonl", tmp_path, file="plain.jsonl"), clip)
    assert plain.type_answers == {} and caplog.text.count("come from the human answers") == 1
    # an adapter saved before, whose filter is keyed by answer type, no longer filters such rows either
    old = build_kind(spec, None, clip, state={**plain.state(), "type_answers": {"yes/no": [0], "other": [1]}})
    row = dataclasses.replace(world.examples[0], question_type="yes/no", meta={})
    assert old.filter_type(row) is None and bool(old.answer_mask(old.filter_type(row)).all())
    typed = build_kind(spec, read_split("jsonl", tmp_path, file="typed.jsonl"), clip)
    assert set(typed.type_answers) == {r["filter_type"] for r in map(json.loads, (tmp_path / "typed.jsonl")
                                                                      .read_text().splitlines())}


def test_captioning_kind_rebuilds_from_state_and_needs_captions(coca):
    spec = load_spec("captioning")
    kind = build_kind(spec, _world(spec, "train", 6), coca)
    again = build_kind(spec, None, coca, state=kind.state())
    ex = _world(spec, "val", 2).examples[0]
    assert again.sample_text(ex) == kind.sample_text(ex)
    no_text = Split([Example(image=ex.image, image_id="x")])
    with pytest.raises(ValueError, match="captioning needs captions"):
        build_kind(spec, no_text, coca)


def test_texts_the_word_level_tokenizer_cannot_read_are_named(caplog):
    """On the built-in backbone (450 words) German captions became <unk> and 37-word captions were cut to the
    same tokens: retrieval scored 0.458 zero-shot and adapted alike, without a word."""
    import logging

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.data.records import Example, Split
    from mtl_lora_vl.tasks.spec import DataSpec, TaskSpec
    from mtl_lora_vl.tasks.texts import split_texts, warn_text_coverage

    bb = load_backbone("builtin")
    spec = TaskSpec(name="mine", kind="retrieval", data=DataSpec("builtin", None, {}, {}))
    long = " ".join(["a red square"] * 15)
    split = Split([Example(image=None, image_id="a", text="ein roter Kreis", captions=("ein roter Kreis",)),
                   Example(image=None, image_id="b", text=long, captions=(long,)),
                   Example(image=None, image_id="c", text="a red square", captions=("a red square",))])
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        warn_text_coverage(spec, split_texts(split), bb)
    assert "task 'mine': 1 of its 3 distinct training texts hold words the" in caplog.text
    assert "'ein roter Kreis'" in caplog.text and "1 of its 3 distinct training texts are longer" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        warn_text_coverage(spec, split_texts(Split([split.examples[2]])), bb)
    assert caplog.text == ""


def test_class_names_the_word_level_tokenizer_cannot_read_are_named(caplog):
    """A caption_cls task's examples carry no text, so class names the built-in tokenizer does not know were never
    checked: 19 of 24 animal names read 'a large <unk>.', 6 distinct classifier rows for 24 classes, silently
    (zero-shot top-1 0.033; helper 146)."""
    import logging

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import build_kind, resolve_tasks

    spec = resolve_tasks("caption_cls")[0]
    names = ["circle", "sheep", "cow", "square"]
    spec = dataclasses.replace(spec, options={**spec.options, "class_names": names})
    split = spec.load_split("train")
    split = dataclasses.replace(split, class_names=names,
                                examples=[e for e in split.examples if e.label < 4][:40])
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        build_kind(spec, split, load_backbone("builtin"))
    assert "task 'caption_cls' (" in caplog.text and "of its 8 distinct class prompts hold words the" in caplog.text
    assert "sheep" in caplog.text or "cow" in caplog.text


@pytest.mark.parametrize("kind_name", ["retrieval", "captioning"])
def test_an_evaluation_split_without_captions_is_refused_at_start(kind_name, clip, coca):
    """Retrieval and captioning found an evaluation split without captions only when scoring it, after training
    (VQA and classification check theirs at start-up)."""
    backbone = coca if kind_name == "captioning" else clip
    kind = build_kind(load_spec(kind_name), world.build_split(kind_name, "train", n=8, seed=0), backbone)
    kind.check_eval_split(world.build_split(kind_name, "val", n=4, seed=0))
    labelled = world.build_split("classification", "val", n=4, seed=0)   # images with labels, no text
    with pytest.raises(ValueError, match=f"task '{kind_name}': the evaluation split has no (reference )?captions"):
        kind.check_eval_split(labelled)


def _check_fp32_under_autocast(head, *inputs):
    ref = head(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(*(x.to(torch.bfloat16) for x in inputs))
    assert got.dtype == torch.float32, got.dtype
    torch.testing.assert_close(got, head(*(x.to(torch.bfloat16).float() for x in inputs)), rtol=1e-5, atol=1e-4)
    assert ref.dtype == torch.float32


def test_task_heads_score_in_fp32_inside_a_training_steps_autocast():
    """The heads upcast their inputs to score in fp32, but the training step calls them inside torch.autocast,
    which cast the matmul back to bf16 (steps of 0.25-0.5 at CLIP's logit scale 100) while evaluation scored in
    fp32 (helper 110)."""
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 64), dim=-1), F.normalize(torch.randn(8, 64), dim=-1)
    _check_fp32_under_autocast(RetrievalHead(100.0), img, txt)
    _check_fp32_under_autocast(ClassifierHead(F.normalize(torch.randn(5, 64), dim=-1), 100.0), img)
    _check_fp32_under_autocast(VQAHead(F.normalize(torch.randn(7, 64), dim=-1), 100.0), img, txt)


def test_a_vqa_head_a_user_cast_to_bf16_still_scores():
    """The head computes its fusion with autocast off, so a head cast to bf16 met fp32 inputs: "mat1 and mat2 must
    have the same dtype". Its fusion now runs in its own dtype; the scores stay fp32."""
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 64), dim=-1), F.normalize(torch.randn(8, 64), dim=-1)
    head = VQAHead(F.normalize(torch.randn(7, 64), dim=-1), 100.0)
    torch.nn.init.normal_(head.fusion[2].weight, std=0.05)
    ref = head(img, txt)
    got = head.to(torch.bfloat16)(img, txt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(img.bfloat16(), txt.bfloat16()).dtype == torch.float32
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.5)   # bf16 weights at logit scale 100


def test_an_nlvr_pair_head_scores_in_fp32_inside_autocast_and_in_its_own_dtype_where_cast():
    """Helper 546: nlvr's PairHead ran under a training step's autocast (its MLP in bf16: bf16 logits, unlike the
    other heads, which read the features in fp32 with autocast off: precision.HEAD_DTYPE's rule) and did not cast its
    input to its weights' dtype as VQA's head does (a head cast to bf16: "mat1 and mat2 must have the same dtype").
    bf16 features under CPU autocast now give the fp32 logits of those features read in fp32, bit for bit; a bf16
    head scores, its logits fp32."""
    torch.manual_seed(0)
    head = PairHead(64, images=2, hidden=32)
    img, txt = torch.randn(8, 2, 64).bfloat16(), torch.randn(8, 64).bfloat16()
    ref = head(img.float(), txt.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(img, txt)
    assert ref.dtype == got.dtype == torch.float32, got.dtype
    assert torch.equal(got, ref)
    cast = head.to(torch.bfloat16)(img.float(), txt.float())
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, ref, rtol=0.05, atol=0.05)   # (bf16 weights)


def test_a_task_name_of_64_characters_loads(tmp_path):
    """A 250-character name trained, then saving the adapter failed (tasks/<name>.state.json too long a file
    name); names are capped at 64 characters, and 64 still load."""
    path = tmp_path / "t.toml"
    path.write_text('name = "' + "t" * 64 + '"\nkind = "vqa"\n' + GOOD)
    assert load_spec(path).name == "t" * 64


def _caption_files(root: Path, train_images: int) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(root / "img" / f"{i}.png")
    train = [{"image": f"{i % train_images}.png", "caption": f"shade {i}"} for i in range(4)]
    val = [{"image": f"{i}.png", "caption": f"shade {i}"} for i in range(3)]
    for name, rows in (("tr.jsonl", train), ("va.jsonl", val)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = root / "ret.toml"
    spec.write_text('kind = "retrieval"\n[data]\nformat = "jsonl"\nimages = "img"\n[data.train]\nfile = "tr.jsonl"\n'
                    '[data.val]\nfile = "va.jsonl"\n')
    return spec


def test_retrieval_on_one_training_image_is_refused_and_trivial_recall_is_said(tmp_path, clip, caplog):
    """One training image: every caption in a batch is a positive, so the loss was exactly 0 at every step and
    nothing was learnt, without a word. An evaluation split of 3 images: t2i recall@5 and @10 are 1.0 whatever
    the model, and lift mean_recall; so are i2t recall@5 and @10, as each image has 2 other captions to rank its own
    above (review 216: the warning named t2i's alone)."""
    spec = load_spec(_caption_files(tmp_path / "one", train_images=1))
    with pytest.raises(ValueError, match="holds one image"):
        build_kind(spec, spec.load_split("train", tmp_path / "one"), clip)
    spec = load_spec(_caption_files(tmp_path / "three", train_images=3))
    kind = build_kind(spec, spec.load_split("train", tmp_path / "three"), clip)
    with caplog.at_level("WARNING"):
        kind.check_eval_split(spec.load_split("val", tmp_path / "three"))
    assert "3 image(s) and 3 caption(s), so i2t_r5, i2t_r10, t2i_r5, t2i_r10 are 1.0 by construction" in caplog.text


def test_distinct_images_never_share_a_retrieval_key():
    """Rows with one key are each other's positives; the key was crc32 & 0x7FFFFFFF (31 bits), under which these two
    ids collide (~3 pairs among COCO's 113k training images; helper 146)."""
    from mtl_lora_vl.tasks.retrieval import _image_key

    a, b = "img_6f212cc6f", "img_5824a96d3b"
    assert _image_key(a) != _image_key(b)
    assert _image_key(a) == _image_key(a) and 0 <= _image_key(a) < 2**63   # stable, fits a torch.long


def _weight_spec(tmp_path: Path, top: str) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(f'kind = "vqa"\n{top}\n[data]\nsource = "builtin"\n')
    return path


@pytest.mark.parametrize("value", ["1e39", "1e300", "1e-300"])
def test_a_loss_weight_the_float32_loss_cannot_carry_is_refused(tmp_path, value):
    """A finite weight too large for a float32 loss (1e39: the weighted loss is inf, every step was skipped and the
    run stopped blaming --lr or the data) or so small that the loss rounds to 0 is refused, naming the field."""
    import re

    from mtl_lora_vl.tasks import SpecError, load_spec

    weighted = float(value) * torch.tensor(2.0)   # what the joint objective computes
    assert not torch.isfinite(weighted) or weighted == 0
    path = _weight_spec(tmp_path, f"loss_weight = {value}")
    with pytest.raises(SpecError, match=rf"{re.escape(str(path))}: field 'loss_weight': expected a number from "):
        load_spec(path)


@pytest.mark.parametrize("value", ["1e-12", "1e-6", "0.001", "1", "5.0", "1e6"])
def test_ordinary_loss_weights_still_load(tmp_path, value):
    from mtl_lora_vl.tasks import load_spec

    assert load_spec(_weight_spec(tmp_path, f"loss_weight = {value}")).loss_weight == float(value)
