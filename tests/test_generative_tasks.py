"""The generative path of the task kinds on a tiny LLaVA built from a config through the real backbone class:
path choice, VQA answers drawn by soft score, mixed-task batches through the language model, evaluation,
retrieval refused at start-up, and the training command end to end."""

from __future__ import annotations

import dataclasses
import gc
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_training_parts import _HostReads
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.scopes import disabled, route
from mtl_lora_vl.backbones import BackboneError
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskCollate, MultiTaskLoader, TaskDataset, to_device
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.metrics import vqa_accuracy
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.options import PATH_DEFAULTS, TrainOptions
from mtl_lora_vl.tasks import SpecError, build_kind, load_spec
from mtl_lora_vl.tasks.generative import GenerationHead, lm_task_loss
from mtl_lora_vl.tasks.spec import available_specs, builtin_spec_dirs

GEN_TASKS = ("vqa", "captioning", "caption_cls")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def _split(spec, split: str, n: int) -> Split:
    return world.build_split(spec.data.options.get("world_kind", spec.kind), split, n=n, seed=0)


def _kinds(backbone, names=GEN_TASKS, n=6):
    specs = [load_spec(t) for t in names]
    return {s.name: build_kind(s, _split(s, "train", n), backbone) for s in specs}


def _attach(backbone, tasks, std: float = 0.2):
    """MTL-LoRA on both towers, with B_i and Lambda_t randomised so that every task's model differs."""
    mlv.attach(backbone.model, mlv.MTLLoRAConfig(tasks=list(tasks), r=4, alpha=8, n_up=2))
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if "lora_B" in name or "lora_lambda" in name:
                p.normal_(0, std)
    return backbone


def _rows(kinds, backbone, per_task=3):
    """Loader rows (as the workers make them) of the first ``per_task`` examples of each task."""
    rows = []
    for t, kind in enumerate(kinds.values()):
        ds = TaskDataset(kind, _split(kind.spec, "train", 6), backbone.image_size)
        rows += [dict(ds[i], task_id=t) for i in range(per_task)]
    return rows


def _collate(kinds, backbone, rows):
    collate = MultiTaskCollate(list(kinds), [False] * len(kinds), None, lm_collator=backbone.lm_collator())
    return to_device(collate(rows), "cpu", torch.float32, backbone)


def _model(backbone, kinds):
    heads = torch.nn.ModuleDict({n: k.build_head(backbone) for n, k in kinds.items()})
    return MultiTaskModel(backbone, kinds, heads).eval()


# ---------------------------------------------------------------------------------------------- paths


def test_kinds_pick_their_path_from_the_backbone_capabilities(llava, clip):
    for name, kind in _kinds(llava).items():
        assert kind.generative and not kind.uses_text, name
        assert isinstance(kind.build_head(llava), GenerationHead)
        assert kind.image_token == llava.image_token
    for name, kind in _kinds(clip, ("vqa", "caption_cls")).items():
        assert not kind.generative, name
        assert sum(p.numel() for p in kind.build_head(clip).parameters()) > 0
    assert _kinds(clip, ("vqa",))["vqa"].uses_text


def test_retrieval_is_refused_when_built_on_a_generative_backbone(llava):
    spec = load_spec("retrieval")
    with pytest.raises(BackboneError, match="contrastive text tower") as err:
        build_kind(spec, _split(spec, "train", 4), llava)
    msg = str(err.value)
    assert "generative" in msg and "--backbone builtin" in msg
    # every other built-in task runs on a generative backbone, and the message offers each (it left out nlvr)
    assert all(f" {name} (" in msg for name in available_specs() if name != "retrieval"), msg


def test_retrieval_refused_at_start_up_before_training(llava_dir, tmp_path, capsys, monkeypatch):
    """Refused before any training split is read (reading and checking COCO's images takes minutes)."""
    from mtl_lora_vl.tasks.spec import TaskSpec

    loaded = []
    real = TaskSpec.load_split
    monkeypatch.setattr(TaskSpec, "load_split", lambda self, *a, **k: loaded.append(self.name) or real(self, *a, **k))
    out = tmp_path / "run"
    code = train_main(["--backbone", f"hf:{llava_dir}", "--tasks", "vqa,retrieval", "--steps", "1",
                       "--workers", "0", "--out", str(out)])
    assert code == 2
    assert "contrastive text tower" in capsys.readouterr().err and loaded == []
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()


def test_generative_spec_table_is_checked(tmp_path):
    spec = load_spec("vqa")
    assert spec.generative["prompt"] == "{image} question: {question} answer:"
    text = next(d / "vqa.toml" for d in builtin_spec_dirs() if (d / "vqa.toml").is_file()).read_text()
    for line, bad, fld in (("prompt", 'prompt = "question: {question} answer:"', "generative.prompt"),
                           ("prompt", 'prompt = "{image} {image} {question}"', "generative.prompt"),
                           ("prompt", 'prompt = "{image} {questoin}"', "generative.prompt"),
                           ("prompt", 'prompt = "{image!x} {question}"', "generative.prompt"),   # raised in a worker
                           ("prompt", 'prompt = "{image} {question:>5}"', "generative.prompt"),
                           ("max_len", "max_len = 0", "generative.max_len"),
                           ("prompt", "colour = 1", "generative.colour")):
        path = tmp_path / "vqa.toml"
        path.write_text(re.sub(rf"^{line} = .*$", bad, text, count=1, flags=re.M))
        with pytest.raises(SpecError, match=re.escape(fld)):
            load_spec(path)


# ---------------------------------------------------------------------------------------------- VQA target


@pytest.mark.parametrize("task", ["captioning", "retrieval"])
def test_a_caption_row_whose_caption_is_blank_is_refused_at_build(llava, clip, task):
    """A blank caption trained an empty target: a lone space token and the end token, at weight 1."""
    backbone = llava if task == "captioning" else clip
    spec = load_spec(task)
    ex = _split(spec, "train", 4).examples
    for text, captions in (("", ("",)), ("  ", ())):
        blank = dataclasses.replace(ex[1], text=text, captions=captions)
        with pytest.raises(ValueError, match=rf"task '{task}': training example 1 \(image '{ex[1].image_id}'\) has no "
                                             r"caption text .*; give the row its caption, or leave the row out"):
            build_kind(spec, Split([ex[0], blank, *ex[2:]]), backbone)
    # A blank text beside a reference caption: the reference is what trains.
    row = dataclasses.replace(ex[1], text=" ", captions=("", ex[2].text))
    kind = build_kind(spec, Split([ex[0], row, *ex[2:]]), backbone)
    trained = kind.sample_lm(row, 0)[1] if task == "captioning" else kind.sample_text(row)
    assert trained == ex[2].text


def test_vqa_answer_is_drawn_by_soft_score_and_deterministic(llava):
    kind = _kinds(llava, ("vqa",), n=40)["vqa"]
    assert {"yes", "no", "red", "blue"} <= kind.consensus and not {"yep", "yeah", "nope"} & kind.consensus
    base = _split(kind.spec, "train", 4).examples[0]
    # Humans disagree between two consensus answers (and one typed a rare spelling): red 6, blue 3, grey 1.
    ex = dataclasses.replace(base, answers=("red",) * 6 + ("blue",) * 3 + ("grey",))
    prompt, _, _ = kind.sample_lm(ex, 0)
    assert prompt == f"{llava.image_token} question: {ex.text} answer:"
    draws = [kind.sample_lm(ex, d) for d in range(2000)]
    assert draws[:50] == [kind.sample_lm(ex, d) for d in range(50)]          # same draw, same answer
    counts = Counter(a for _, a, _ in draws)
    scores = {a: vqa_accuracy(a, ex.answers) for a in ("red", "blue")}
    assert set(counts) == {"red", "blue"}                                    # "grey" is no consensus answer
    for answer, score in scores.items():
        assert abs(counts[answer] / len(draws) - score / sum(scores.values())) < 0.04, (answer, counts, scores)
    assert all(w == pytest.approx(scores[a]) for _, a, w in draws)           # loss weight = the answer's score
    # A rare spelling beside the consensus answer is never a target: "yes" with weight 1.
    yes = dataclasses.replace(base, answers=("yes",) * 8 + ("yep", "yeah"))
    assert {kind.sample_lm(yes, d)[1:] for d in range(200)} == {("yes", 1.0)}
    # No consensus answer at all: draw among what the humans said.
    odd = dataclasses.replace(base, answers=("yep",) * 10)
    assert kind.sample_lm(odd, 0)[1:] == ("yep", 1.0)
    # Only answers the normalisation empties ("what letter ...?" "a"): weight 0 (it raised in a worker, mid-run)
    article = dataclasses.replace(base, answers=("a",) * 7 + ("A", "the", ""))
    assert kind.sample_lm(article, 0)[1:] == ("a", 0.0)
    # The consensus set survives the adapter's saved state.
    again = build_kind(kind.spec, None, llava, state=json.loads(json.dumps(kind.state())))
    assert again.consensus == kind.consensus


def test_loader_rows_are_the_same_in_workers_and_tokenised_there(llava):
    kinds = _kinds(llava, ("vqa", "captioning"), n=4)
    splits = [_split(k.spec, "train", 4) for k in kinds.values()]
    loader = MultiTaskLoader(list(kinds.values()), splits, llava, batch_size=6, steps=3, num_workers=1, seed=0)
    batches = list(loader)
    again = list(MultiTaskLoader(list(kinds.values()), splits, llava, batch_size=6, steps=3, num_workers=0, seed=0))
    for a, b in zip(batches, again):                                         # workers and main process agree
        assert torch.equal(a["lm"]["input_ids"], b["lm"]["input_ids"])
        assert torch.equal(a["lm"]["labels"], b["lm"]["labels"])
    batch = batches[0]
    assert "tokens" not in batch and set(batch["lm"]) == {"input_ids", "attention_mask", "labels"}
    assert set(batch["tasks"]) == {"vqa", "captioning"}
    assert batch["tasks"]["captioning"]["lm_weight"].eq(1).all()


# ---------------------------------------------------------------------------------------------- the LM batch


def test_labels_cover_only_the_target_and_its_end_token(llava):
    kinds = _kinds(llava)
    rows = _rows(kinds, llava)
    batch = _collate(kinds, llava, rows)
    lm, tok = batch["lm"], llava.processor.tokenizer
    for r, row in enumerate(rows):
        prompt, target, _ = row["lm"]
        labelled = lm["labels"][r][lm["labels"][r] != -100].tolist()
        assert labelled == [*tok(target, add_special_tokens=False)["input_ids"], llava.eos_id]
        n = int(lm["attention_mask"][r].sum())
        assert lm["labels"][r, n - len(labelled):n].tolist() == labelled          # right after the prompt
        assert (lm["labels"][r, :n - len(labelled)] == -100).all()                # prompt masked
        assert (lm["labels"][r, n:] == -100).all() and (lm["attention_mask"][r, n:] == 0).all()


def test_task_losses_count_only_target_tokens(llava):
    """Each task's loss equals the mean over its rows of the target-only token CE computed by hand from
    the model's logits; counting prompt tokens too gives another number."""
    kinds = _kinds(llava)
    _attach(llava, kinds)
    batch = _collate(kinds, llava, _rows(kinds, llava))
    model = _model(llava, kinds)
    with torch.no_grad():
        _, losses = model(batch)
        lm = batch["lm"]
        with route(llava.model, batch["task_ids"]):
            logits = llava.model(pixel_values=batch["images"], input_ids=lm["input_ids"],
                                 attention_mask=lm["attention_mask"]).logits.float()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), lm["input_ids"][:, 1:].flatten(),
                                           reduction="none").view(logits.shape[0], -1)
    target = (lm["labels"][:, 1:] != -100).float()
    real = lm["attention_mask"][:, 1:].float()
    target_only = (ce * target).sum(1) / target.sum(1)
    with_prompt = (ce * real).sum(1) / real.sum(1)
    for name, view in batch["tasks"].items():
        rows, w = view["rows"], view["lm_weight"]
        assert losses[name].item() == pytest.approx((target_only[rows] * w).mean().item(), rel=1e-4, abs=1e-5)
        assert abs(losses[name].item() - (with_prompt[rows] * w).mean().item()) > 1e-3


def test_mixed_batch_task_losses_equal_each_task_alone(llava):
    kinds = _kinds(llava)
    _attach(llava, kinds)
    rows = _rows(kinds, llava)
    model = _model(llava, kinds)
    for name, w in zip(kinds, (2.0, 0.5, 1.0)):   # the joint objective weighs each task's loss
        kinds[name].spec = dataclasses.replace(kinds[name].spec, loss_weight=w)
    with torch.no_grad():
        total, mixed = model(_collate(kinds, llava, rows))
        torch.testing.assert_close(total, sum(k.spec.loss_weight * mixed[n] for n, k in kinds.items()))
        for t, name in enumerate(kinds):
            own = [r for r in rows if r["task_id"] == t]
            _, alone = model(_collate(kinds, llava, own))
            assert set(alone) == {name}
            assert mixed[name].item() == pytest.approx(alone[name].item(), rel=1e-4, abs=1e-5), name
        # Routing matters: the same rows under another task's adapters give another loss.
        vqa_rows = [dict(r, task_id=1) for r in rows if r["task_id"] == 0]
        _, other = model(_collate(kinds, llava, vqa_rows))
    assert abs(other["captioning"].item() - mixed["vqa"].item()) > 1e-4


def test_one_language_model_pass_per_step(llava, monkeypatch):
    kinds = _kinds(llava)
    _attach(llava, kinds)
    batch = _collate(kinds, llava, _rows(kinds, llava))
    calls = []
    real = llava.lm_loss
    monkeypatch.setattr(llava, "lm_loss", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    assert isinstance(batch["lm_first_label"], int)   # made by the loader on the host
    with _HostReads() as h:   # the first labelled position and the image-token counts were read on the device
        total, losses = _model(llava, kinds).train()(batch)
    assert h.ours == []       # (transformers' LLaVA makes a few reads of its own: its checks and masks)
    total.backward()
    assert calls == [9]
    assert set(losses) == set(GEN_TASKS)
    grads = [p.grad for n, p in llava.model.named_parameters() if "lora_lambda" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lm_loss_reads_the_first_labelled_position_itself_when_not_given(llava):
    kinds = _kinds(llava)
    batch = _collate(kinds, llava, _rows(kinds, llava))
    lm = batch["lm"]
    with torch.no_grad():
        given = llava.lm_loss(batch["images"], **lm, first_label=batch["lm_first_label"])
        read = llava.lm_loss(batch["images"], **lm)
    assert torch.equal(given, read) and batch["lm_first_label"] > 0


def test_lm_task_loss_weights_rows():
    rows = {"lm_loss": torch.tensor([1.0, 3.0]), "lm_weight": torch.tensor([1.0, 0.5])}
    assert lm_task_loss(rows).item() == pytest.approx(1.25)
    assert lm_task_loss({"lm_loss": torch.tensor([1.0, 3.0])}).item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("name,metric,extra", [("vqa", "vqa_accuracy", "vqa_accuracy/"),
                                               ("captioning", "bleu4", "cider"),
                                               ("caption_cls", "top1", "mean_per_class")])
def test_generative_evaluation_zero_shot_and_adapted(llava, name, metric, extra):
    kind = _kinds(llava, (name,))[name]
    _attach(llava, [name])
    head = kind.build_head(llava)
    test = _split(kind.spec, "test", 4)
    with disabled(llava.model):
        zs = kind.evaluate(llava, None, test, batch_size=5, device="cpu")
    with route(llava.model, name):
        ad = kind.evaluate(llava, head, test, batch_size=5, device="cpu")
    for out in (zs, ad):
        assert 0.0 <= out[metric] <= 1.0
        assert any(k.startswith(extra) for k in out)


def test_classification_score_mean_ranks_classes_per_token(llava, monkeypatch, tmp_path):
    """``[generative] score = "mean"``: the class with the highest log-probability per token wins (the total
    favours short names); "sum" is the default; any other value is named."""
    kind = _kinds(llava, ("caption_cls",))["caption_cls"]
    kind.class_names = ["red", "blue square"]
    asked = []

    def scores(images, prompts, candidates, per_token=False, end=""):
        asked.append(per_token)
        total = torch.tensor([[-2.0, -2.4]]).expand(len(prompts), 2)  # candidate tokens: 2 and 3 (with the end)
        return total / torch.tensor([2.0, 3.0]) if per_token else total

    monkeypatch.setattr(llava, "sequence_scores", scores)
    test = _split(kind.spec, "test", 3)
    assert kind.spec.generative["score"] == "sum" and len(test.examples) >= 3
    assert kind.logits(llava, None, test.examples[:3], batch_size=4, device="cpu").argmax(1).tolist() == [0] * 3
    kind.spec.generative["score"] = "mean"
    assert kind.logits(llava, None, test.examples[:3], batch_size=4, device="cpu").argmax(1).tolist() == [1] * 3
    assert set(asked) == {False, True}
    text = next(d / "caption_cls.toml" for d in builtin_spec_dirs() if (d / "caption_cls.toml").is_file()).read_text()
    path = tmp_path / "caption_cls.toml"
    path.write_text(re.sub(r"^score = .*$", 'score = "max"', text, count=1, flags=re.M))
    with pytest.raises(SpecError, match=re.escape("generative.score")):
        load_spec(path)


def test_eval_limit_takes_the_first_examples(llava, monkeypatch):
    kind = _kinds(llava, ("vqa",))["vqa"]
    kind.spec.generative["eval_limit"] = 5
    seen = []
    monkeypatch.setattr(llava, "generate", lambda images, max_len, beam_size, prompts: seen.extend(prompts)
                        or ["yes"] * len(prompts))
    test = _split(kind.spec, "test", 4)
    out = kind.evaluate(llava, None, test, batch_size=2, device="cpu")
    assert out["n"] == 5 and seen == [kind.prompt(ex) for ex in test.examples[:5]]
    assert seen[0].endswith("answer:") and llava.image_token in seen[0]


def test_an_eval_limit_that_leaves_classes_out_is_warned_about(llava, monkeypatch, caplog):
    """A split sorted by label (a JSONL written class by class): the first eval_limit rows hold few classes."""
    kind = _kinds(llava, ("caption_cls",))["caption_cls"]
    test = _split(kind.spec, "test", 6)
    ordered = dataclasses.replace(test, examples=sorted(test.examples, key=lambda ex: ex.label))
    kind.spec.generative["eval_limit"] = 2
    monkeypatch.setattr(kind, "logits", lambda bb, head, part, **kw: torch.zeros(len(part), len(kind.class_names)))
    with caplog.at_level("WARNING"):
        kind.evaluate(llava, None, ordered, batch_size=2, device="cpu")
    assert "hold no example of" in caplog.text and "shuffle the split's rows or raise eval_limit" in caplog.text
    kind.evaluate(llava, None, ordered, batch_size=2, device="cpu")   # the adapted pass: said once, not twice
    assert caplog.text.count("hold no example of") == 1
    del ordered
    for _ in range(10):   # new splits, each freed before the next: one was taken for another by its id()
        gc.collect()
        kind.evaluate(llava, None, dataclasses.replace(test, examples=sorted(test.examples, key=lambda ex: ex.label)),
                      batch_size=2, device="cpu")
    assert caplog.text.count("hold no example of") == 11
    monkeypatch.undo()   # (the stub logits above)
    pickle.loads(pickle.dumps(kind))   # what it remembers still pickles (the kind goes to loader workers)


# ---------------------------------------------------------------------------------------------- the command


def test_path_defaults_keep_the_clip_job_and_fit_the_llava_job():
    opts = TrainOptions()
    assert opts.with_path_defaults(False).steps == 400 and opts.with_path_defaults(False).batch_size == 64
    gen = opts.with_path_defaults(True)
    assert (gen.steps, gen.batch_size, gen.eval_batch_size) == tuple(PATH_DEFAULTS[k][1] for k in
                                                                     ("steps", "batch_size", "eval_batch_size"))
    assert TrainOptions(steps=7).with_path_defaults(True).steps == 7


def _small_spec(tmp: Path, name: str, n: int = 6, limit: int = 4) -> str:
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split in ("train", "val", "test"):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    text = re.sub(r"^eval_limit = \d+", f"eval_limit = {limit}", text, flags=re.M)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return str(path)


def test_train_command_on_a_generative_backbone(llava_dir, tmp_path, capsys):
    out = tmp_path / "run"
    tasks = ",".join(_small_spec(tmp_path, t) for t in ("vqa", "captioning"))
    code = train_main(["--backbone", f"hf:{llava_dir}", "--tasks", tasks, "--steps", "2", "--workers", "0",
                       "--log-every", "1", "--warmup", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "| vqa | vqa_accuracy |" in table and "| captioning | bleu4 |" in table
    assert "| vqa | vqa_accuracy/" in table and "| captioning | cider |" in table      # the second table
    result = json.loads((out / "eval.json").read_text())
    for name, metric in (("vqa", "vqa_accuracy"), ("captioning", "bleu4")):
        r = result["tasks"][name]
        assert r["metric"] == metric and 0 <= r["zero_shot"] <= 1 and 0 <= r["adapted"] <= 1
    assert any(k.startswith("vqa_accuracy/") for k in result["tasks"]["vqa"]["details"]["adapted"])
    assert "cider" in result["tasks"]["captioning"]["details"]["zero_shot"]
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == PATH_DEFAULTS["batch_size"][1] and config["steps"] == 2
    assert result["tasks"]["vqa"]["n"] == 4 and result["tasks"]["captioning"]["n"] == 4   # eval_limit
    assert (out / "report.md").is_file() and (out / "plots" / "zero_shot_vs_adapted.png").is_file()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/vqa", "loss/captioning"} <= set(logged[-1])

    # The saved adapter alone rebuilds the generative kinds on the recorded backbone: same scores.
    assert_eval_repeats(out / "adapter", tmp_path / "ev", result)


def assert_eval_repeats(adapter: Path, ev: Path, result: dict, *extra: str) -> None:
    """``eval --adapter`` on the saved adapter alone (plus ``extra`` arguments) gives the run's zero-shot and
    adapted scores again."""
    assert eval_main(["--adapter", str(adapter), "--out", str(ev), *extra]) == 0
    again = json.loads((ev / "eval.json").read_text())
    for name, scores in result["tasks"].items():
        for which in ("zero_shot", "adapted"):
            assert again["tasks"][name][which] == pytest.approx(scores[which], abs=1e-6), (name, which)


def test_a_kind_without_a_generative_path_says_what_to_use():
    """The base ``sample_lm`` (retrieval has no generative path) refuses with what to use, not a bare stub."""
    from types import SimpleNamespace

    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    with pytest.raises(BackboneError, match="'retrieval' has no generative path.*contrastive backbone"):
        RetrievalKind.sample_lm(SimpleNamespace(kind="retrieval"), None, 0)


def test_training_rows_longer_than_the_language_model_s_context_are_named(llava, caplog):
    """Captions past the LM's positions gave no warning of ours: a model with learned positions fails mid-run,
    one with rotary positions (the tiny Llama here) trains on positions it never saw; the loader cuts nothing."""
    spec = load_spec("captioning")
    train = _split(spec, "train", 6)
    build_kind(spec, train, llava)
    assert "longer than the language model's context" not in caplog.text
    long = " ".join(["red square"] * 100)
    rows = [dataclasses.replace(train.examples[0], text=long, captions=(long,)), *train.examples[1:]]
    build_kind(spec, Split(rows), llava)
    assert (f"task 'captioning': 1 of its {len(rows)} training rows are longer than the language model's context "
            f"of {llava.lm_context} tokens") in caplog.text
    assert llava.lm_context == 128


def test_special_token_text_in_rows_is_refused_naming_the_task_and_row(llava):
    """A caption holding '</s>' trained with an end token mid-target, silently; a question or caption holding
    '<image>' failed with a message about the processor's image tokens. Both are refused when the split is
    read (training) or checked at start-up (evaluation), naming the task, the row and the token."""
    spec = load_spec("captioning")
    train = _split(spec, "train", 6)
    eos = llava.hf_processor.tokenizer.eos_token   # '</s>' on LLaVA-1.5, '<eot>' on the tiny one
    bad = [dataclasses.replace(train.examples[0], text=f"a red {eos} square", captions=(f"a red {eos} square",)),
           *train.examples[1:]]
    with pytest.raises(ValueError, match=rf"task 'captioning': training example .* holds '{eos}', a special token"):
        build_kind(spec, Split(bad), llava)
    kind = build_kind(spec, train, llava)
    vqa_spec = load_spec("vqa")
    vqa = build_kind(vqa_spec, _split(vqa_spec, "train", 6), llava)
    val = _split(vqa_spec, "val", 4)
    odd = Split([dataclasses.replace(val.examples[0], text="what is <image> here"), *val.examples[1:]])
    with pytest.raises(ValueError, match=r"task 'vqa': evaluation example .* holds '<image>'"):
        vqa.check_eval_split(odd)
    vqa.check_eval_split(val)
    kind.check_eval_split(_split(spec, "val", 4))


def test_each_task_view_gets_its_own_rows_lm_weights(llava):
    """The loader gathers each task's lm_weight by that task's rows. The loss test reads view["lm_weight"] back
    from the batch, so weights taken from the wrong rows (the first len(idx) of the batch) went unnoticed."""
    kinds = _kinds(llava)
    rows = _rows(kinds, llava)
    for i, row in enumerate(rows):   # a distinct weight per row
        prompt, target, _ = row["lm"]
        row["lm"] = (prompt, target, 0.1 * (i + 1))
    batch = _collate(kinds, llava, list(reversed(rows)))   # the collate sorts the rows by task
    for t, name in enumerate(kinds):
        want = sorted(r["lm"][2] for r in rows if r["task_id"] == t)
        got = sorted(batch["tasks"][name]["lm_weight"].tolist())
        assert got == [float(torch.tensor(w, dtype=torch.float32)) for w in want], name


def test_accumulated_micro_batches_give_the_one_batch_gradient_of_their_rows(llava, monkeypatch):
    """--accumulate 2 over micro-batches that hold a task's rows unevenly (vqa 1 + 2, captioning 2 + 1, as the
    mixed sampler's remainders give them) trains what one batch of the same six rows trains: each row of a
    task weighs 1 / (its rows in the step), not 1 / (its rows in its micro-batch)."""
    import mtl_lora_vl.training.step as step_mod
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.training.optim import Optimization

    kinds = _kinds(llava, ("vqa", "captioning"))
    _attach(llava, kinds)
    for name, w in zip(kinds, (2.0, 0.5)):
        kinds[name].spec = dataclasses.replace(kinds[name].spec, loss_weight=w)
    rows = _rows(kinds, llava, per_task=3)          # vqa: rows 0-2, captioning: rows 3-5
    model = _model(llava, kinds)
    params = [p for p in model.parameters() if p.requires_grad]
    monkeypatch.setattr(step_mod, "to_device", lambda batch, *a: batch)

    def step(batches):
        opt = torch.optim.SGD(params, lr=0.0)
        optim = Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                             torch.amp.GradScaler("cpu", enabled=False), params)
        r = step_mod.forward_backward(model, iter(batches), optim, accumulate=len(batches), backbone=llava,
                                      amp_dtype=torch.float32, info=DistInfo())
        return torch.cat([p.grad.flatten() for p in params]), r.losses

    one, one_losses = step([_collate(kinds, llava, rows)])
    two, two_losses = step([_collate(kinds, llava, [rows[0], rows[3], rows[4]]),
                            _collate(kinds, llava, [rows[1], rows[2], rows[5]])])
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)
    assert two_losses == pytest.approx(one_losses, rel=1e-4)


def test_a_target_cut_by_max_length_does_not_train_the_end_token(llava, caplog):
    """lm_collator(max_length) cutting an answer must not label an end token after the cut (that teaches the
    model to stop mid-answer); the cut is said."""
    collate = llava.lm_collator(max_length=llava.num_image_tokens + 6)
    prompt, target = f"{llava.image_token} caption:", "a large red circle above a small blue square"
    with caplog.at_level("WARNING"):
        batch = collate([prompt, prompt], [target, "red"])
    assert int(batch["attention_mask"][0].sum()) <= llava.num_image_tokens + 6
    cut = batch["labels"][0][batch["labels"][0] != -100].tolist()
    whole = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert cut and cut[-1] != llava.eos_id          # the cut answer's tokens only
    assert whole[-1] == llava.eos_id                # a row that fits keeps its end token
    assert "max_length" in caplog.text


def test_texts_the_language_model_s_tokenizer_cannot_read_are_named(caplog):
    """The built-in LLaVA's tokenizer is word-level (450 words): class names it does not know read <unk>, so
    'a large sheep' and 'a large cow' were the same candidate ids and tied on every image, and an unknown VQA answer
    trained the model to write <unk> (decoded as ""), without a word: the check of the contrastive path returned
    early on a language model."""
    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import resolve_tasks

    bb = load_backbone("builtin-llava")
    spec = resolve_tasks("caption_cls")[0]
    names = ["circle", "sheep", "square"]   # (with "cow" too, the two tie: refused, test_generative_class_case.py)
    spec = dataclasses.replace(spec, options={**spec.options, "class_names": names})
    split = spec.load_split("train")
    split = dataclasses.replace(split, class_names=names, examples=[e for e in split.examples if e.label < 3][:40])
    with caplog.at_level("WARNING", logger="mtl_lora_vl"):
        kind = build_kind(spec, split, bb)
    assert kind.generative
    assert ("task 'caption_cls' (" in caplog.text and "1 of its 3 distinct class prompts hold words the language "
            "model's tokenizer does not know" in caplog.text and "'a large sheep'" in caplog.text)
    tied = ["circle", "sheep", "cow", "square"]
    spec4 = dataclasses.replace(spec, options={**spec.options, "class_names": tied})
    split4 = dataclasses.replace(split, class_names=tied)
    with pytest.raises(ValueError, match=r"'sheep' and 'cow' are one text.*<unk>"):
        build_kind(spec4, split4, bb)
    caplog.clear()
    vqa = load_spec("vqa")
    train = _split(vqa, "train", 6)
    with caplog.at_level("WARNING", logger="mtl_lora_vl"):
        build_kind(vqa, train, bb)   # the world's words: nothing to say
        assert "does not know" not in caplog.text
        odd = dataclasses.replace(train.examples[0], answers=("dalmatian",) * 10)
        build_kind(vqa, Split([odd, *train.examples[1:]]), bb)
    assert "task 'vqa' (" in caplog.text and "'dalmatian'" in caplog.text
