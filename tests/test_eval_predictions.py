"""``eval --predictions``: per-row predictions in OUT/predictions/<task>.jsonl, those the metrics came from."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from test_eval_zero_shot import _small_spec  # (the same small built-in specs)

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.metrics import caption_scores, normalize_answer, vqa_accuracy
from mtl_lora_vl.tasks.spec import load_spec

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file()
                                or not (builtin_llava_dir() / "config.json").is_file(),
                                reason="built-in backbones not built (scripts/pretrain_backbone.py, pretrain_llava.py)")


def _rows(ev: Path, task: str) -> list[dict]:
    lines = (ev / "predictions" / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _check_vqa(rows: list[dict], spec_file: str, passes: tuple[str, ...], task: dict) -> None:
    """Rows in split order with the split's questions and answers; each pass's per-row accuracies are those of its
    answers, and average to its eval.json score."""
    examples = load_spec(spec_file).load_split(task["split"], None).examples
    assert [r["index"] for r in rows] == list(range(task["n"]))
    for r in rows:
        ex = examples[r["index"]]
        assert r["image"] is None   # built-in scenes are held in memory
        assert r["question"] == ex.text and r["reference"]["answers"] == list(ex.answers)
        assert r["reference"]["scores"] == {a: vqa_accuracy(a, ex.answers)
                                            for a in {normalize_answer(a) for a in ex.answers} - {""}}
        assert set(r) - {"index", "image", "question", "question_type", "reference"} == set(passes)
        for p in passes:
            assert r[p]["vqa_accuracy"] == vqa_accuracy(r[p]["answer"], ex.answers)
    for p in passes:
        assert _mean([r[p]["vqa_accuracy"] for r in rows]) == pytest.approx(task["details"][p]["vqa_accuracy"],
                                                                             abs=1e-12)


def test_adapter_predictions_adapted_and_zero_shot(tmp_path):
    """An adapter on the built-in CLIP: each row has the adapted and zero-shot answers (the top candidate), whose
    accuracies average to eval.json's; without --predictions no folder is written."""
    vqa = _small_spec(tmp_path, "vqa", 24, 12)
    run, ev, plain = tmp_path / "run", tmp_path / "ev", tmp_path / "plain"
    assert train_main(["--tasks", vqa, "--steps", "2", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--lr", "0.05", "--no-eval-val", "--eval-batch-size", "16", "--out", str(run), "-q"]) == 0
    adapter = str(run / "adapter")
    assert not (run / "predictions").exists()   # train writes them only with --predictions
    assert eval_main(["--adapter", adapter, "--batch-size", "16", "--out", str(ev), "--predictions", "-q"]) == 0
    result = json.loads((ev / "eval.json").read_text())
    rows = _rows(ev, "vqa")
    _check_vqa(rows, vqa, ("adapted", "zero_shot"), result["tasks"]["vqa"])
    assert any(r["adapted"]["answer"] != r["zero_shot"]["answer"] for r in rows)   # two models' answers
    assert sorted(p.name for p in (ev / "predictions").iterdir()) == ["vqa.jsonl"]
    assert eval_main(["--adapter", adapter, "--batch-size", "16", "--out", str(plain), "-q"]) == 0
    assert not (plain / "predictions").exists()
    assert json.loads((plain / "eval.json").read_text())["tasks"] == result["tasks"]   # no metric changed


def test_generative_predictions_vqa_and_captioning(tmp_path):
    """The built-in LLaVA scored zero-shot (no adapter): generated answers and captions, only ``zero_shot``; the
    file's captions are the scored ones (their BLEU-4 and CIDEr are eval.json's)."""
    vqa, cap = (_small_spec(tmp_path, t, 8, 6, limit=4) for t in ("vqa", "captioning"))
    ev = tmp_path / "ev"
    assert eval_main(["--backbone", "builtin-llava", "--tasks", f"{vqa},{cap}", "--batch-size", "4", "--out", str(ev),
                      "--predictions", "-q"]) == 0
    result = json.loads((ev / "eval.json").read_text())
    _check_vqa(_rows(ev, "vqa"), vqa, ("zero_shot",), result["tasks"]["vqa"])
    rows = _rows(ev, "captioning")
    task = result["tasks"]["captioning"]
    assert len(rows) == task["n"] == 4
    assert all(set(r) == {"index", "image", "reference", "zero_shot"} for r in rows)
    assert all(r["reference"]["captions"] and isinstance(r["zero_shot"]["caption"], str) for r in rows)
    scores = caption_scores({r["index"]: r["zero_shot"]["caption"] for r in rows},
                            {r["index"]: r["reference"]["captions"] for r in rows})
    assert scores["bleu4"] == pytest.approx(task["details"]["zero_shot"]["bleu4"], abs=1e-12)
    assert scores["cider"] == pytest.approx(task["details"]["zero_shot"]["cider"], abs=1e-12)


def _check_classification(rows: list[dict], spec_file: str, passes: tuple[str, ...], task: dict) -> None:
    """Each row's class is the split's; the share of right top-1 classes is top1, of rows whose class is among the
    top five is top5."""
    split = load_spec(spec_file).load_split(task["split"], None)
    assert [r["index"] for r in rows] == list(range(task["n"]))
    for r in rows:
        assert r["reference"]["label"] == split.class_names[split.examples[r["index"]].label]
        for p in passes:
            assert r[p]["correct"] == (r[p]["label"] == r["reference"]["label"])
            scores = [s for _, s in r[p]["top5"]]
            assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    for p in passes:
        metrics = task["details"][p]
        assert _mean([r[p]["correct"] for r in rows]) == pytest.approx(metrics["top1"], abs=1e-12)
        top5 = [r["reference"]["label"] in [c for c, _ in r[p]["top5"]] for r in rows]
        assert _mean(top5) == pytest.approx(metrics["top5"], abs=1e-12)


def _check_nlvr(rows: list[dict], spec_file: str, passes: tuple[str, ...], task: dict) -> None:
    """Each row's statement, two images and truth are the split's; the share of predicted truths that are right is
    the accuracy."""
    examples = load_spec(spec_file).load_split(task["split"], None).examples
    assert [r["index"] for r in rows] == list(range(task["n"]))
    for r in rows:
        ex = examples[r["index"]]
        assert r["statement"] == ex.text and r["reference"]["truth"] == (ex.label == 1) and r["image"] == [None, None]
        for p in passes:
            assert r[p]["truth"] == (r[p]["score"] > r[p]["threshold"])
    for p in passes:
        right = [r[p]["truth"] == r["reference"]["truth"] for r in rows]
        assert _mean(right) == pytest.approx(task["details"][p]["accuracy"], abs=1e-12)


def test_classification_and_nlvr_predictions(tmp_path):
    """The built-in CLIP, zero-shot: classification's top-1 and top five with their scores, nlvr's predicted
    truths; both agree with eval.json's scores."""
    cls, nlvr = (_small_spec(tmp_path, t, 24, 20) for t in ("caption_cls", "nlvr"))
    ev = tmp_path / "ev"
    assert eval_main(["--tasks", f"{cls},{nlvr}", "--batch-size", "16", "--out", str(ev), "--predictions", "-q"]) == 0
    result = json.loads((ev / "eval.json").read_text())
    _check_classification(_rows(ev, "caption_cls"), cls, ("zero_shot",), result["tasks"]["caption_cls"])
    _check_nlvr(_rows(ev, "nlvr"), nlvr, ("zero_shot",), result["tasks"]["nlvr"])


def test_generative_classification_and_nlvr_predictions(tmp_path):
    """The built-in LLaVA, zero-shot: the classes and truths its candidate likelihoods chose."""
    cls, nlvr = (_small_spec(tmp_path, t, 24, 6, limit=4) for t in ("caption_cls", "nlvr"))
    ev = tmp_path / "ev"
    assert eval_main(["--backbone", "builtin-llava", "--tasks", f"{cls},{nlvr}", "--batch-size", "8", "--out", str(ev),
                      "--predictions", "-q"]) == 0
    result = json.loads((ev / "eval.json").read_text())
    _check_classification(_rows(ev, "caption_cls"), cls, ("zero_shot",), result["tasks"]["caption_cls"])
    _check_nlvr(_rows(ev, "nlvr"), nlvr, ("zero_shot",), result["tasks"]["nlvr"])


def test_retrieval_predictions(tmp_path):
    """Retrieval on the built-in CLIP, adapted and zero-shot: per image its captions, the five best-scored caption
    indices and whether its own caption is among them; the hits average to i2t_r5, and each row's rank to i2t_r1."""
    spec = _small_spec(tmp_path, "retrieval", 24, 12)
    run, ev = tmp_path / "run", tmp_path / "ev"
    assert train_main(["--tasks", spec, "--steps", "2", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--lr", "0.05", "--no-eval-val", "--eval-batch-size", "16", "--out", str(run), "-q"]) == 0
    assert eval_main(["--adapter", str(run / "adapter"), "--batch-size", "16", "--out", str(ev), "--predictions",
                      "-q"]) == 0
    task = json.loads((ev / "eval.json").read_text())["tasks"]["retrieval"]
    rows = _rows(ev, "retrieval")
    examples = load_spec(spec).load_split(task["split"], None).examples
    assert len(rows) == task["n"] == 12
    indices = [i for r in rows for i in r["reference"]["captions"]]
    assert indices == list(range(len(indices)))   # every caption once, listed image by image
    texts = [t for r in rows for t in r["reference"]["texts"]]
    for r in rows:
        ex = examples[r["index"]]
        assert ex.text in r["reference"]["texts"] or set(ex.captions) <= set(r["reference"]["texts"])
        assert [rr["index"] for rr in rows if examples[rr["index"]].image_id == ex.image_id] == [r["index"]]
        for p in ("adapted", "zero_shot"):
            assert len(r[p]["top5"]) == 5 and all(0 <= j < len(texts) for j in r[p]["top5"])
            assert r[p]["hit"] == (r[p]["rank"] < 5)
            if r[p]["rank"] == 0:   # its best own caption leads
                assert r[p]["top5"][0] in r["reference"]["captions"]
    for p in ("adapted", "zero_shot"):
        metrics = task["details"][p]
        assert _mean([r[p]["hit"] for r in rows]) == pytest.approx(metrics["i2t_r5"], abs=1e-12)
        assert _mean([r[p]["rank"] == 0 for r in rows]) == pytest.approx(metrics["i2t_r1"], abs=1e-12)
    assert any(r["adapted"]["top5"] != r["zero_shot"]["top5"] for r in rows)


def test_train_predictions_from_the_final_evaluation(tmp_path):
    """``train --predictions``: the finished run's RUN/predictions/<task>.jsonl, adapted and zero-shot, from the final
    evaluation it runs; the rows average to the run's eval.json scores."""
    vqa, cls = _small_spec(tmp_path, "vqa", 24, 12), _small_spec(tmp_path, "caption_cls", 24, 10)
    run = tmp_path / "run"
    assert train_main(["--tasks", f"{vqa},{cls}", "--steps", "2", "--batch-size", "8", "--warmup", "0", "--workers",
                       "0", "--lr", "0.05", "--no-eval-val", "--eval-batch-size", "16", "--out", str(run),
                       "--predictions", "-q"]) == 0
    tasks = json.loads((run / "eval.json").read_text())["tasks"]
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["caption_cls.jsonl", "vqa.jsonl"]
    _check_vqa(_rows(run, "vqa"), vqa, ("adapted", "zero_shot"), tasks["vqa"])
    _check_classification(_rows(run, "caption_cls"), cls, ("adapted", "zero_shot"), tasks["caption_cls"])


def test_rows_of_unusable_images_are_left_out(tmp_path):
    """Rows whose image file cannot be decoded are left out of the records as of the scores; the others keep their
    index in the split and their file path. Without a sink nothing is recorded (the default)."""
    import dataclasses

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.data import world
    from mtl_lora_vl.tasks import build_kind

    backbone = load_backbone("builtin", device="cpu")
    kind = build_kind(load_spec("vqa"), world.build_split("vqa", "train", n=8, seed=0), backbone)
    split = world.build_split("vqa", "test", n=4, seed=1)
    rows = []
    for i, ex in enumerate(split.examples):
        path = tmp_path / f"{i}.png"
        ex.image.render(backbone.image_size).save(path)
        rows.append(dataclasses.replace(ex, image=str(path)))
    bad = Path(rows[1].image)
    bad.write_bytes(bad.read_bytes()[:60])   # truncated: the row's image cannot be decoded
    split = dataclasses.replace(split, examples=rows)
    records: list[dict] = []
    scores = kind.evaluate(backbone, None, split, batch_size=4, device="cpu", records=records)
    left = [i for i, ex in enumerate(rows) if ex.image != str(bad)]
    assert [r["index"] for r in records] == left and scores["n"] == len(left) < len(rows)
    assert [r["image"] for r in records] == [rows[i].image for i in left]
    assert _mean([r["prediction"]["vqa_accuracy"] for r in records]) == pytest.approx(scores["vqa_accuracy"])
    assert kind.evaluate(backbone, None, split, batch_size=4, device="cpu") == scores


def test_written_rows_non_ascii_nan_and_no_rows(tmp_path):
    """The file's edge cases: text is written as eval.json writes it (ASCII, ``\\u`` escapes: the same bytes in any
    locale) and reads back as given; a non-finite score is null (JSON has no NaN); a task with no rows gets an
    empty file; a pass that left a row out has no entry in it."""
    import dataclasses

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.data import world
    from mtl_lora_vl.evaluation.predictions import merge_passes, write_predictions
    from mtl_lora_vl.tasks import build_kind

    backbone = load_backbone("builtin", device="cpu")
    kind = build_kind(load_spec("vqa"), world.build_split("vqa", "train", n=8, seed=0), backbone)
    split = world.build_split("vqa", "test", n=2, seed=1)
    first = dataclasses.replace(split.examples[0], text="qué color?", answers=("café crème",) * 10)
    split = dataclasses.replace(split, examples=[first, *split.examples[1:]])
    records: list[dict] = []
    kind.evaluate(backbone, None, split, batch_size=4, device="cpu", records=records)
    rows = merge_passes({"zero_shot": records, "adapted": records[1:]})
    rows[1]["zero_shot"]["vqa_accuracy"] = float("nan")
    rows[1]["adapted"]["top5"] = [["a", float("inf")], ["b", 1.5]]
    write_predictions(tmp_path, {"vqa": rows, "empty": []})
    raw = (tmp_path / "predictions" / "vqa.jsonl").read_bytes()
    assert raw.isascii() and b"caf\\u00e9 cr\\u00e8me" in raw
    back = _rows(tmp_path, "vqa")
    assert back[0]["question"] == "qué color?" and back[0]["reference"]["answers"] == ["café crème"] * 10
    assert "adapted" not in back[0] and back[1]["zero_shot"]["vqa_accuracy"] is None
    assert back[1]["adapted"]["top5"] == [["a", None], ["b", 1.5]]
    assert (tmp_path / "predictions" / "empty.jsonl").read_text() == ""


def test_predictions_are_written_line_by_line(tmp_path):
    """Writing a large split's rows holds one line at a time, not the file's whole text beside the rows (which
    took twice the file's size: every line, then the joined text)."""
    import tracemalloc

    from mtl_lora_vl.evaluation.predictions import write_predictions

    rows = [{"index": i, "image": f"images/{i:06d}.jpg", "question": "what colour is the cube?",
             "reference": {"answers": ["red"] * 10}, "adapted": {"answer": "red", "vqa_accuracy": 1.0}}
            for i in range(20000)]
    tracemalloc.start()
    try:
        write_predictions(tmp_path, {"vqa": rows})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = (tmp_path / "predictions" / "vqa.jsonl").stat().st_size
    assert size > 3_000_000 and peak < size / 10, (size, peak)
    assert len(_rows(tmp_path, "vqa")) == 20000


def test_a_kind_that_records_nothing_is_refused_before_training(tmp_path, monkeypatch, capsys, caplog):
    """A kind registered elsewhere, written before --predictions (its ``_evaluate`` takes no ``records``): train
    --predictions stops at start-up, naming the task and kind, not with a TypeError after training; so does eval."""
    from mtl_lora_vl.tasks.vqa import VQAKind

    inner = VQAKind._evaluate

    def written_before_predictions(self, backbone, head, split, *, batch_size, device, dtype, num_workers):
        return inner(self, backbone, head, split, batch_size=batch_size, device=device, dtype=dtype,
                     num_workers=num_workers)

    monkeypatch.setattr(VQAKind, "_evaluate", written_before_predictions)
    vqa = _small_spec(tmp_path, "vqa", 24, 12)
    run = tmp_path / "run"
    assert train_main(["--tasks", vqa, "--steps", "2", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--no-eval-val", "--out", str(run), "--predictions", "-q"]) == 2
    said = capsys.readouterr().err + caplog.text
    assert "--predictions: task 'vqa' has a kind (VQAKind) that records no per-row predictions" in said
    assert not (run / "adapter").exists() and not (run / "checkpoint.pt").exists()   # refused before training
    assert eval_main(["--tasks", vqa, "--out", str(tmp_path / "ev"), "--predictions", "-q"]) == 2
    said = capsys.readouterr().err + caplog.text
    assert "task 'vqa' has a kind (VQAKind) that records no per-row predictions" in said
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_only_rank_0_records_the_rows(tmp_path, monkeypatch):
    """Under torchrun rank 0 alone writes the rows, so the other ranks keep none (they held every task's rows, ~2.5
    KB a row for two passes, to throw them away); they still score."""
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.evaluation import evaluate as ev
    from mtl_lora_vl.tasks import resolve_tasks

    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs["predictions"])
        return real(*args, **kwargs)

    real = ev.evaluate_setup
    monkeypatch.setattr(ev, "evaluate_setup", spy)
    specs = resolve_tasks(_small_spec(tmp_path, "vqa", 16, 6))
    for rank in (1, 0):
        out = tmp_path / f"rank{rank}"
        ev._evaluate_base(specs, "builtin", None, None, "test", DistInfo(rank=rank), "auto", 16, 0, out, "auto",
                          predictions=True)
        assert (out / "predictions" / "vqa.jsonl").is_file() == (rank == 0)
    n = json.loads((tmp_path / "rank0" / "eval.json").read_text())["tasks"]["vqa"]["n"]
    assert asked[0] is None and list(asked[1].written) == ["vqa"] and len(_rows(tmp_path / "rank0", "vqa")) == n > 0


def test_each_task_file_is_written_as_the_task_is_scored(tmp_path, monkeypatch, capsys, caplog):
    """eval --predictions writes a task's file as soon as the task is scored and drops its rows: while the next task
    is scored the file is complete in OUT/predictions.partial/ and no row of it is held (the rows of every task were
    held to the end, ~2.5 KB a row); a run stopped there keeps that file, whole, and no half-written one. A rerun
    with --overwrite replaces the stopped run's folder, and writes the same bytes to OUT/predictions/."""
    import gc

    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
    from mtl_lora_vl.tasks.classification import ClassificationKind

    vqa, cls = _small_spec(tmp_path, "vqa", 16, 10), _small_spec(tmp_path, "caption_cls", 16, 6)
    ev, seen = tmp_path / "ev", {}

    def stopped(self, *args, **kwargs):   # task 2's scoring: look at task 1's file and rows, then stop the run
        gc.collect()
        seen["files"] = sorted(p.name for p in (ev / "predictions.partial").iterdir())
        seen["vqa"] = (ev / "predictions.partial" / "vqa.jsonl").read_bytes()
        seen["held"] = sum(type(o) is dict and "question_type" in o and "reference" in o for o in gc.get_objects())
        raise RuntimeError("stopped")

    with monkeypatch.context() as m:
        m.setattr(ClassificationKind, "_evaluate", stopped)
        with pytest.raises(RuntimeError, match="stopped"):
            evaluate_adapter(None, tasks=f"{vqa},{cls}", out=ev, batch_size=8, predictions=True)
    assert seen["files"] == ["vqa.jsonl"] and seen["held"] == 0
    rows = [json.loads(line) for line in seen["vqa"].decode().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(rows))) and len(rows) >= 10
    assert sorted(p.name for p in ev.iterdir()) == ["predictions.partial"]
    assert sorted(p.name for p in (ev / "predictions.partial").iterdir()) == ["vqa.jsonl"]   # no temporary left
    assert eval_main(["--tasks", f"{vqa},{cls}", "--out", str(ev), "--batch-size", "8", "--predictions", "-q"]) == 2
    assert "holds only predictions.partial/" in capsys.readouterr().err + caplog.text
    assert eval_main(["--tasks", f"{vqa},{cls}", "--out", str(ev), "--batch-size", "8", "--predictions", "-q",
                      "--overwrite"]) == 0
    assert sorted(p.name for p in ev.iterdir()) == ["eval.json", "plots", "predictions", "report.md"]
    assert sorted(p.name for p in (ev / "predictions").iterdir()) == ["caption_cls.jsonl", "vqa.jsonl"]
    assert (ev / "predictions" / "vqa.jsonl").read_bytes() == seen["vqa"]


def test_train_writes_each_task_file_as_the_task_is_scored(tmp_path, monkeypatch):
    """train --predictions: the final evaluation writes RUN/predictions/<task>.jsonl as each task is scored, so a run
    stopped in a later task keeps the earlier tasks' files (and eval.json is not written)."""
    from mtl_lora_vl.tasks.classification import ClassificationKind

    vqa, cls = _small_spec(tmp_path, "vqa", 16, 10), _small_spec(tmp_path, "caption_cls", 16, 6)
    run, seen = tmp_path / "run", {}
    inner = ClassificationKind._evaluate

    def stopped(self, backbone, head, *args, **kwargs):   # the final evaluation's adapted pass of task 2
        if head is not None and kwargs.get("records") is not None:
            seen["files"] = sorted(p.name for p in (run / "predictions").iterdir())
            raise KeyboardInterrupt
        return inner(self, backbone, head, *args, **kwargs)

    monkeypatch.setattr(ClassificationKind, "_evaluate", stopped)
    args = ["--steps", "1", "--batch-size", "8", "--warmup", "0", "--workers", "0", "--no-eval-val"]
    assert train_main(["--tasks", f"{vqa},{cls}", *args, "--out", str(run), "--predictions", "-q"]) == 130
    assert seen["files"] == ["vqa.jsonl"] and not (run / "eval.json").exists()
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["vqa.jsonl"]
    assert len(_rows(run, "vqa")) >= 10


def test_two_evals_writing_the_same_out_each_move_their_own_rows(tmp_path, monkeypatch):
    """Two eval --predictions runs on the same OUT at once: each stages its task files in a folder of its own, so
    the one that ends first moves only its own rows, and the other still ends with its own (they shared
    OUT/predictions.partial/: B's end replaced OUT, and A's staged files with it, so A failed 'No such file')."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
    from mtl_lora_vl.tasks.classification import ClassificationKind

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cls = _small_spec(tmp_path, "caption_cls", 16, 6)
    vqa_a, vqa_b = _small_spec(tmp_path / "a", "vqa", 16, 10), _small_spec(tmp_path / "b", "vqa", 16, 7)
    ev, seen = tmp_path / "ev", {}
    inner = ClassificationKind._evaluate

    def second_eval(self, *args, **kwargs):   # A's second task: B runs whole in its middle, then A goes on
        if not seen:
            seen["b"] = "running"
            seen["b"] = evaluate_adapter(None, tasks=f"{vqa_b},{cls}", out=ev, batch_size=8, predictions=True,
                                         overwrite=True)
            seen["b_n"] = json.loads((ev / "eval.json").read_text())["tasks"]["vqa"]["n"]
            seen["b_rows"] = len(_rows(ev, "vqa"))
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationKind, "_evaluate", second_eval)
    evaluate_adapter(None, tasks=f"{vqa_a},{cls}", out=ev, batch_size=8, predictions=True, overwrite=True)
    assert seen["b_rows"] == seen["b_n"]   # B's own rows, when B ended
    n = json.loads((ev / "eval.json").read_text())["tasks"]["vqa"]["n"]
    assert len(_rows(ev, "vqa")) == n != seen["b_n"]   # A's own rows, with A's eval.json
    assert sorted(p.name for p in (ev / "predictions").iterdir()) == ["caption_cls.jsonl", "vqa.jsonl"]
    assert sorted(p.name for p in ev.iterdir()) == ["eval.json", "plots", "predictions", "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no staging folder left


def test_the_folders_of_killed_evals_are_removed_by_the_next_eval_of_the_same_out(tmp_path):
    """Review 269: an eval --predictions killed (SIGKILL, out of memory) left its hidden staging folder
    .OUT.predictions-XXXXXXXX beside OUT, with a copy of its rows; two killed evals left two, and a later eval of the
    same OUT that finished removed neither. A folder whose eval still runs (its .lock held) is kept."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
    from mtl_lora_vl.io.locks import take_lock

    ev = tmp_path / "ev"
    dead, alive, other = (tmp_path / f".{n}.predictions-x1y2z3" for n in ("ev", "ev", "ev2"))
    for folder in (dead, alive.with_name(".ev.predictions-alive"), other):
        folder.mkdir()
        (folder / "vqa.jsonl").write_text('{"index": 0}\n')
        (folder / ".lock").write_text("12345\n")   # its process is gone: the lock is free
    alive = alive.with_name(".ev.predictions-alive")
    held = take_lock(alive / ".lock")
    try:
        evaluate_adapter(None, tasks=str(_small_spec(tmp_path, "vqa", 16, 6)), out=ev, batch_size=8,
                         predictions=True)
    finally:
        held.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [alive.name, other.name]
    assert sorted(p.name for p in (ev / "predictions").iterdir()) == ["vqa.jsonl"]


def test_a_folder_whose_eval_has_not_taken_its_lock_yet_is_kept(tmp_path):
    """Review 271: between an eval making its staging folder's .lock and taking it (the holder writes its process id
    once it holds it), another eval of the same OUT read the lock as free and removed the folder under it. An empty
    .lock is kept; a written, free one (its eval killed) is removed."""
    from mtl_lora_vl.evaluation.predictions import StagedFiles

    starting, dead = tmp_path / ".ev.predictions-starting", tmp_path / ".ev.predictions-dead"
    for folder, pid in ((starting, ""), (dead, "12345\n")):
        folder.mkdir()
        (folder / ".lock").write_text(pid)
    sink = StagedFiles(tmp_path / "ev")
    try:
        sink("vqa", [{"index": 0}])
    finally:
        sink.close()
    assert starting.is_dir() and not dead.exists()


def test_an_out_that_is_a_link_stages_beside_its_target(tmp_path):
    """Review 271: with --out a symbolic link, the staging folder was made beside the link, but OUT is written beside
    its target (atomic_dir): a target on another file system (/dev/shm) failed the eval at its end with 'Invalid
    cross-device link', after scoring, and wrote no eval.json. The folder is now made beside the target."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
    from mtl_lora_vl.evaluation.predictions import StagedFiles

    (tmp_path / "elsewhere").mkdir(), (tmp_path / "here").mkdir()
    target, link = tmp_path / "elsewhere" / "real", tmp_path / "here" / "ev"
    target.mkdir()
    link.symlink_to(target)
    sink = StagedFiles(link)
    try:
        sink("vqa", [{"index": 0}])
        assert sink.stage.parent == target.parent and sink.stage.name.startswith(".real.predictions-")
    finally:
        sink.close()
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        other = Path(tempfile.mkdtemp(dir=shm))
        try:
            link.unlink()
            link.symlink_to(other)
            evaluate_adapter(None, tasks=str(_small_spec(tmp_path, "vqa", 16, 6)), out=link, batch_size=8,
                             predictions=True, overwrite=True)
            assert sorted(p.name for p in (other / "predictions").iterdir()) == ["vqa.jsonl"]
            assert (other / "eval.json").is_file() and not list(other.parent.glob(f".{other.name}.predictions-*"))
        finally:
            shutil.rmtree(other, ignore_errors=True)
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["ev"]   # nothing staged beside the link


def test_the_killed_evals_folders_of_an_out_named_with_brackets_are_removed(tmp_path):
    """Review 271: the killed evals' folders were found by a glob of OUT's name, so an OUT named 'ev[1]' matched
    '.ev1.predictions-*' (another OUT's) and never its own '.ev[1].predictions-*', which piled up."""
    from mtl_lora_vl.evaluation.predictions import StagedFiles

    own, other = tmp_path / ".ev[1].predictions-x1y2z3", tmp_path / ".ev1.predictions-x1y2z3"
    for folder in (own, other):
        folder.mkdir()
        (folder / ".lock").write_text("12345\n")   # its process is gone: the lock is free
    sink = StagedFiles(tmp_path / "ev[1]")
    try:
        sink("vqa", [{"index": 0}])
        assert sorted(p.name for p in tmp_path.iterdir() if p != sink.stage) == [other.name, "ev[1]"]
    finally:
        sink.close()


def test_a_task_name_that_cannot_name_its_file_is_refused_before_scoring(tmp_path):
    """A Python-built TaskSpec named '<dir>/outside' wrote <dir>/outside.jsonl, out of the predictions folder ('a/b'
    a subfolder); the predictions sinks refuse such a name with the one file-name rule, before any task is scored."""
    import dataclasses

    import torch

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.data import world
    from mtl_lora_vl.evaluation.evaluate import evaluate_setup
    from mtl_lora_vl.evaluation.predictions import PredictionFiles, write_predictions
    from mtl_lora_vl.multitask.setup import Setup
    from mtl_lora_vl.tasks import build_kind

    outside = str(tmp_path / "outside")
    for name in (outside, "a/b", "a:b"):
        with pytest.raises(ValueError, match=r"predictions: task name '.*' contains '[/:]'.*"
                                             r"predictions/<task>\.jsonl; rename the task"):
            write_predictions(tmp_path / "run", {name: [{"index": 0}]})
    backbone = load_backbone("builtin", device="cpu")
    spec = dataclasses.replace(load_spec("vqa"), name=outside)
    kind = build_kind(spec, world.build_split("vqa", "train", n=8, seed=0), backbone)
    setup = Setup(backbone, [spec], {outside: kind}, None, None)
    scored = []
    kind.evaluate = lambda *a, **k: scored.append(1)   # (not reached)
    said = rf"predictions: task name {re.escape(repr(outside))} contains '/'"
    with pytest.raises(ValueError, match=said):
        evaluate_setup(setup, split="test", data_root=None, device="cpu", dtype=torch.float32, batch_size=4,
                       adapted=False, predictions=PredictionFiles(tmp_path / "run" / "predictions"))
    assert not scored and not (tmp_path / "outside.jsonl").exists() and not (tmp_path / "run" / "predictions").exists()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_staging_link_out_of_out_is_refused_before_anything_is_written(tmp_path, capsys, caplog, dangling):
    """eval --predictions links each scored task's file into OUT/predictions.partial/: where that was a symbolic link
    out of OUT (an OUT unpacked from an archive), the files were written where it led, replacing a vqa.jsonl of the
    user's there. It is refused by name before the base model loads, as a resumed run's links are (rundir); a link
    that stays in OUT, and the same link without --predictions (OUT is replaced whole), are left alone."""
    from mtl_lora_vl.evaluation.evaluate import _check_out
    from mtl_lora_vl.rundir import RunDirError

    victim, ev = tmp_path / "victim", tmp_path / "ev"
    victim.mkdir(), ev.mkdir()
    (victim / "vqa.jsonl").write_text("precious\n")
    (ev / "predictions.partial").symlink_to(victim / "gone" if dangling else victim)
    said = "which does not exist" if dangling else "out of the --out folder"
    assert eval_main(["--tasks", "vqa", "--out", str(ev), "--predictions", "--overwrite", "-q"]) == 2
    assert "predictions.partial is a symbolic link" in capsys.readouterr().err + caplog.text
    with pytest.raises(RunDirError, match=rf"--out {re.escape(str(ev))}: .*predictions\.partial is a symbolic link "
                                          rf"to .*victim.*{said}.*eval --predictions writes its predictions\.partial "
                                          "there.*remove the link"):
        _check_out(ev, True, [], predictions=True)
    assert (victim / "vqa.jsonl").read_text() == "precious\n" and sorted(p.name for p in ev.iterdir()) == [
        "predictions.partial"]
    _check_out(ev, True, [])   # without --predictions nothing is written through it
    (ev / "predictions.partial").unlink()
    (ev / "kept").mkdir(), (ev / "eval.json").write_text("{}")
    (ev / "predictions.partial").symlink_to("kept")   # stays in OUT (an earlier eval's, replaced with --overwrite)
    _check_out(ev, True, [("x", None)], predictions=True)
