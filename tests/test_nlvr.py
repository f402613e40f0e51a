"""Rows of several images (NLVR2's pair): the loader, the routed image tower, the nlvr kind and its refusals."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from torch import nn
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.data import world
from mtl_lora_vl.data.images import image_key, to_uint8_tensor
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.data.records import Example, Split, image_parts
from mtl_lora_vl.data.resize import ImageResize
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.tasks import build_kind, load_spec


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def _pairs(n: int, seed: int = 0) -> Split:
    """``n`` hand-made pair rows on world scenes, random labels and two statement types."""
    scenes = [ex.image for ex in world.build_split("classification", "train", n=n + 1, seed=seed).examples]
    rng = random.Random(seed)
    return Split([Example((scenes[i], scenes[i + 1]), f"pair-{i}", text=rng.choice(["the left image contains a "
                                                                                     "red circle", "both images "
                                                                                     "contain a square"]),
                          label=rng.randrange(2), question_type=rng.choice(["existence", "both"]))
                  for i in range(n)])


def _kinds(clip, names=("nlvr", "vqa")):
    splits = {"nlvr": _pairs(10), "vqa": world.build_split("vqa", "train", n=4)}
    kinds = {n: build_kind(load_spec(n), splits[n], clip) for n in names}
    return kinds, splits


def test_an_example_of_several_images_decodes_to_a_stack_and_is_named_by_its_files(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(a)
    Image.new("RGB", (30, 40), (10, 10, 200)).save(b)
    pair = to_uint8_tensor((str(a), str(b)), 16)
    assert pair.shape == (2, 3, 16, 16) and torch.equal(pair[1], to_uint8_tensor(str(b), 16))
    assert image_key((str(a), str(b))) == f"{a} + {b}" and image_key((str(a), object())) is None
    with pytest.raises(ValueError, match="native resize"):
        to_uint8_tensor((str(a), str(b)), ImageResize(56, "native", factor=28))
    ex = Example((str(a), str(b)), "p0", text="t", label=1)
    parts = image_parts(ex)
    assert [p.image for p in parts] == [str(a), str(b)] and [p.image_id for p in parts] == ["p0#0", "p0#1"]
    # the checkpoint's data digest names both files; a one-image row's digest is as before
    one = Split([Example(str(a), "x", text="t")])
    assert Split([ex]).rows_sha256 != Split([Example((str(a), str(a)), "p0", text="t", label=1)]).rows_sha256
    import hashlib
    import json
    h = hashlib.sha256(json.dumps(None).encode())
    h.update(json.dumps(["x", "a.png", "t", [], [], None, None]).encode())
    assert one.rows_sha256 == h.hexdigest()


def test_the_loader_lays_out_a_batch_of_pairs_and_single_images(clip):
    kinds, splits = _kinds(clip)
    loader = MultiTaskLoader(list(kinds.values()), list(splits.values()), clip, batch_size=6, steps=1, seed=0)
    batch = next(iter(loader))
    ids = batch["task_ids"].tolist()
    n_pair = ids.count(0)
    assert 0 < n_pair < 6
    assert batch["images"].shape[0] == 2 * n_pair + (6 - n_pair)
    assert batch["image_segments"] == ((0, 0, 2 * n_pair), (1, 2 * n_pair, 6 + n_pair))
    assert batch["segments"] == ((0, 0, n_pair), (1, n_pair, 6))
    pair_index = batch["tasks"]["nlvr"]["image_index"]
    assert pair_index.tolist() == [[2 * i, 2 * i + 1] for i in range(n_pair)]
    assert batch["tasks"]["vqa"]["image_index"].tolist() == list(range(2 * n_pair, 6 + n_pair))
    # each pair row's images are its example's left and right, in order
    row = batch["indices"][0].item()
    left, right = splits["nlvr"].examples[row].image
    assert torch.equal(batch["images"][0], to_uint8_tensor(left, clip.image_size))
    assert torch.equal(batch["images"][1], to_uint8_tensor(right, clip.image_size))
    # one-image tasks alone: the layout is as before (no image_segments, no image_index)
    alone = next(iter(MultiTaskLoader([kinds["vqa"]], [splits["vqa"]], clip, batch_size=4, steps=1, seed=0)))
    assert "image_segments" not in alone and "image_index" not in alone["tasks"]["vqa"]


def test_a_mixed_batch_routes_each_image_through_its_rows_task(tmp_path):
    """The joint step's per-task losses equal each task's rows run alone, under adapters that differ per task:
    the pair rows' images must go through nlvr's adapter, image by image (routing the images by the rows' segments
    would give the vqa rows' images nlvr's adapter and the last pair images vqa's)."""
    clip = tiny_backbone(tmp_path)
    kinds, splits = _kinds(clip)
    heads = nn.ModuleDict({n: k.build_head(clip) for n, k in kinds.items()})
    mlv.attach(clip.model, mlv.MTLLoRAConfig(tasks=list(kinds), r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in clip.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)   # adapters that change every output, differently per task
    model = MultiTaskModel(clip, kinds, heads)
    loader = MultiTaskLoader(list(kinds.values()), list(splits.values()), clip, batch_size=6, steps=1, seed=0)
    batch = to_device(next(iter(loader)), "cpu", torch.float32, clip)
    total, mixed = model(batch)
    for task_id, name in enumerate(kinds):
        _, alone = model(_one_task_batch(batch, name, task_id))
        torch.testing.assert_close(mixed[name], alone[name])
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "heads.nlvr" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def _one_task_batch(batch: dict, name: str, task_id: int) -> dict:
    """The rows of one task of a collated batch, as the loader would lay them out alone."""
    view = batch["tasks"][name]
    rows = view["rows"]
    index = view.get("image_index", rows)
    images = batch["images"][index.reshape(-1)]
    n, k = rows.numel(), index.numel() // rows.numel()
    sub = {"task_ids": torch.full((n,), task_id), "segments": ((task_id, 0, n),), "indices": batch["indices"][rows],
           "images": images, "tokens": batch["tokens"][rows], "text_rows": torch.arange(n),
           "text_segments": ((task_id, 0, n),)}
    own = {k_: v for k_, v in view.items() if k_ not in ("rows", "image_index", "text_index")}
    sub["tasks"] = {name: {"rows": torch.arange(n), "text_index": torch.arange(n), **own}}
    if k > 1:
        sub["image_segments"] = ((task_id, 0, n * k),)
        sub["tasks"][name]["image_index"] = torch.arange(n * k).view(n, k)
    return sub


def test_nlvr_evaluates_zero_shot_and_with_its_head(clip):
    kinds, splits = _kinds(clip, ("nlvr",))
    kind, split = kinds["nlvr"], splits["nlvr"]
    zero = kind.evaluate(clip, None, split, batch_size=4, device="cpu")
    assert zero["n"] == 10 and set(zero) >= {"accuracy", "accuracy/both", "accuracy/existence"}
    scores = kind.scores(clip, None, split.examples, batch_size=3, device="cpu")
    pred = scores > scores.median()
    assert int(pred.sum()) == 5   # torch.median of 10 values is the 5th smallest: 5 rows above it are called true
    want = sum(bool(p) == (ex.label == 1) for p, ex in zip(pred, split.examples)) / 10
    assert zero["accuracy"] == pytest.approx(want)
    head = kind.build_head(clip)
    adapted = kind.evaluate(clip, head, split, batch_size=4, device="cpu")
    logits = kind.scores(clip, head, split.examples, batch_size=4, device="cpu")
    assert adapted["accuracy"] == pytest.approx(sum((s > 0) == (ex.label == 1)
                                                    for s, ex in zip(logits, split.examples)) / 10)


def test_consistency_is_the_share_of_groups_whose_rows_are_all_right(clip):
    from mtl_lora_vl.tasks.nlvr import consistency

    rows = [Example("x", str(i), meta={"group": g} if g else {}) for i, g in enumerate(["a", "a", "b", "b", "c", ""])]
    assert consistency(rows, [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]) == {"consistency": 2 / 3, "groups": 3.0}
    assert consistency(rows[5:], [1.0]) == {}
    split = _pairs(10)
    split = Split([Example(ex.image, ex.image_id, text=ex.text, label=ex.label, meta={"group": f"s{i // 3}"})
                   for i, ex in enumerate(split.examples)])
    kind = build_kind(load_spec("nlvr"), split, clip)
    out = kind.evaluate(clip, None, split, batch_size=4, device="cpu")
    scores = kind.scores(clip, None, split.examples, batch_size=4, device="cpu")
    right = [(bool(s > scores.median()) == (ex.label == 1)) for s, ex in zip(scores, split.examples)]
    want = sum(all(right[j:j + 3]) for j in range(0, 10, 3)) / 4
    assert out["groups"] == 4 and out["consistency"] == pytest.approx(want)
    assert "consistency" not in kind.evaluate(clip, None, _pairs(10), batch_size=4, device="cpu")


def test_consistency_may_head_the_report_when_the_rows_carry_groups(clip, tmp_path):
    """consistency is a fraction, so listed first it heads the report (review 181: it never could); a spec that
    lists it first on rows without groups is refused at start-up, not after training."""
    from mtl_lora_vl.tasks.nlvr import NLVRKind

    spec_file = tmp_path / "pairs.toml"
    spec_file.write_text('name = "pairs"\nkind = "nlvr"\nmetrics = ["consistency", "accuracy"]\n[data]\n'
                         'source = "builtin"\n')
    spec = load_spec(str(spec_file))
    assert NLVRKind.headline(spec) == "consistency"
    kind = build_kind(spec, _pairs(4), clip)
    with pytest.raises(ValueError, match=r"headline metric is consistency .* no evaluation row carries a group"):
        kind.check_eval_split(_pairs(4))
    grouped = Split([Example(ex.image, ex.image_id, text=ex.text, label=ex.label, meta={"group": str(i // 2)})
                     for i, ex in enumerate(_pairs(4).examples)])
    kind.check_eval_split(grouped)
    out = kind.evaluate(clip, None, grouped, batch_size=4, device="cpu")
    assert out["groups"] == 2 and 0 <= out["consistency"] <= 1


def test_a_group_cut_by_eval_limit_is_left_out_of_consistency(llava, tmp_path):
    """With [generative] eval_limit the first N rows are scored: a group with rows past the limit is not judged on
    the rows that happen to be scored (review 181: it counted as consistent on one of its two pairs)."""
    spec_file = tmp_path / "pairs.toml"
    spec_file.write_text('name = "pairs"\nkind = "nlvr"\n[data]\nsource = "builtin"\n[generative]\neval_limit = 3\n')
    kind = build_kind(load_spec(str(spec_file)), world.build_split("nlvr", "train", n=4), llava)
    rows = [Example(ex.image, ex.image_id, text=ex.text, label=1, meta={"group": g})
            for ex, g in zip(world.build_split("nlvr", "val", n=4).examples, ["a", "a", "b", "b"])]
    kind.scores = lambda backbone, head, examples, **kw: torch.ones(len(examples))   # every scored row right
    out = kind.evaluate(llava, None, Split(rows), batch_size=4, device="cpu")
    assert out["n"] == 3 and out["groups"] == 1 and out["consistency"] == 1.0


def test_an_unreadable_image_drops_its_pair_from_the_scores(clip, tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(p)
        paths.append(str(p))
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    examples = [Example((paths[i], paths[(i + 1) % 6]), f"p{i}", text="both images contain a square",
                        label=i % 2) for i in range(6)]
    kind = build_kind(load_spec("nlvr"), Split(examples), clip)
    out = kind.evaluate(clip, None, Split(examples), batch_size=4, device="cpu")
    assert out["n"] == 4   # pairs 2 (…, 3.png) and 3 (3.png, …) are left out


def test_nlvr_refusals(clip, tmp_path):
    spec = load_spec("nlvr")
    one = Split([Example(world.build_split("vqa", "train", n=1).examples[0].image, "x", text="s", label=1)])
    with pytest.raises(ValueError, match=r"example 'x' holds 1 image\(s\); a row of an nlvr task holds two or more"):
        build_kind(spec, one, clip)
    bad = _pairs(3)
    bad.examples[1] = Example(bad.examples[1].image, "b", text="s", label=2)
    with pytest.raises(ValueError, match=r"example 'b' has label 2; expected 1 .* or 0"):
        build_kind(spec, bad, clip)
    kind = build_kind(spec, _pairs(3), clip)
    three = Split([Example((*_pairs(1).examples[0].image, _pairs(1).examples[0].image[0]), "t3", text="s", label=0)])
    with pytest.raises(ValueError, match=r"'t3' holds 3 image\(s\); a row of an nlvr task holds 2 images"):
        kind.check_eval_split(three)
    for name in ("vqa", "retrieval"):   # a one-image kind given pair rows (format = "nlvr2" with another kind)
        with pytest.raises(ValueError, match=rf"training example 'pair-0' holds 2 images, but a {name} task reads one"):
            build_kind(load_spec(name), _pairs(3), clip)
    vqa = build_kind(load_spec("vqa"), world.build_split("vqa", "train", n=3), clip)
    with pytest.raises(ValueError, match=r"evaluation example 'pair-0' holds 2 images.*kind = \"nlvr\""):
        vqa.check_eval_split(_pairs(2))


def _nlvr2_folder(root, split: str, n: int, *, directory: bool) -> None:
    """NLVR2's layout in miniature: ``<split>.json`` lines and the pair images (train's in numbered subfolders)."""
    import json

    rng = random.Random(split)
    lines = []
    for i in range(n):
        ident = f"{split}-{i // 2}-{i % 2}-0"   # two pairs per sentence (set i // 2)
        sub = root / "images" / split / (str(i % 2) if directory else "")
        sub.mkdir(parents=True, exist_ok=True)
        colours = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(2)]
        for side, colour in enumerate(colours):
            Image.new("RGB", (24, 20), colour).save(sub / f"{split}-{i // 2}-{i % 2}-img{side}.png")
        row = {"identifier": ident, "sentence": "the left image contains a red circle",
               "label": "True" if sum(colours[0]) > sum(colours[1]) else "False", "synset": "x", "query": "y"}
        if directory:
            row["directory"] = i % 2
        lines.append(json.dumps(row))
    (root / f"{split}.json").write_text("\n".join(lines) + "\n")


def test_nlvr2_files_train_and_evaluate_through_the_commands(tmp_path):
    """The spec the built-in one's comment shows, on NLVR2-format files: train, then the saved adapter evaluates
    on a fresh base to the run's adapted scores."""
    import json

    from mtl_lora_vl.cli import eval_main, train_main

    data = tmp_path / "nlvr2"
    _nlvr2_folder(data, "train", 12, directory=True)
    _nlvr2_folder(data, "dev", 8, directory=False)
    spec = tmp_path / "pairs.toml"
    spec.write_text('name = "pairs"\nkind = "nlvr"\n[data]\nformat = "nlvr2"\n'
                    '[data.train]\nannotations = "train.json"\nimages = "images/train"\n'
                    '[data.val]\nannotations = "dev.json"\nimages = "images/dev"\n'
                    '[data.test]\nannotations = "dev.json"\nimages = "images/dev"\n')
    vqa = tmp_path / "vqa.toml"   # a small vqa beside it: the pair rows share batches with one-image rows
    vqa.write_text('name = "vqa"\nkind = "vqa"\n[data]\nsource = "builtin"\n[data.train]\nn = 8\n[data.val]\nn = 4\n'
                   '[data.test]\nn = 4\n')
    run = tmp_path / "run"
    assert train_main(["--tasks", f"{spec},{vqa}", "--data-root", str(data), "--steps", "3", "--batch-size", "8",
                       "--warmup", "0", "--workers", "0", "--eval-batch-size", "16", "--out", str(run), "-q"]) == 0
    result = json.loads((run / "eval.json").read_text())
    pairs = result["tasks"]["pairs"]
    assert pairs["metric"] == "accuracy" and pairs["n"] == 8
    assert set(pairs["details"]["adapted"]) == {"accuracy", "n", "consistency", "groups"}
    assert pairs["details"]["adapted"]["groups"] == 4   # the 8 dev pairs are 4 sentences
    from mtl_lora_vl.evaluation.report import scored_line

    assert "pairs 8 examples in 4 groups" in scored_line(result)
    ev = tmp_path / "ev"
    assert eval_main(["--adapter", str(run / "adapter"), "--tasks", f"{spec},{vqa}", "--data-root", str(data),
                      "--batch-size", "16", "--out", str(ev), "-q"]) == 0
    again = json.loads((ev / "eval.json").read_text())
    for when in ("zero_shot", "adapted"):
        assert again["tasks"]["pairs"]["details"][when] == pytest.approx(pairs["details"][when])


def test_training_fallback_names_and_skips_the_broken_file_of_a_pair(tmp_path, caplog):
    """A broken file in two pairs is warned about once, as a file (not as "left + right", which named the good
    partner as unusable), and its second pair is replaced without decoding it again (review 173)."""
    import logging

    from mtl_lora_vl.data.fallback import ImageFallback

    paths = {}
    for n in "ABCD":
        paths[n] = tmp_path / f"{n}.png"
        Image.new("RGB", (20, 20), (10, 20, 30)).save(paths[n])
    paths["A"].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    a, b, c, d = (str(paths[n]) for n in "ABCD")
    fb = ImageFallback("nlvr", [Example((a, b), "r0"), Example((a, c), "r1"), Example((d, b), "r2")], 16)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data.fallback"):
        for i in range(3):
            j, pixels = fb.decode(i)
            assert j == 2 and pixels.shape == (2, 3, 16, 16)
        fb.report()
    assert len([r for r in caplog.records if "its rows are replaced" in r.getMessage()]) == 1
    assert fb.failed_files() == [a] and fb.replaced == 2
    summary = caplog.records[-1].getMessage()
    assert "1 image(s) cannot be used" in summary and b not in summary and c not in summary


def assert_pair_spec_trains(spec, data_root, run) -> None:
    """``train`` on a pair spec (its test split 4 rows typed "a" / "b") for 2 steps: the run reports nlvr's accuracy,
    per type, on its 4 test rows."""
    import json

    from mtl_lora_vl.cli import train_main

    assert train_main(["--tasks", str(spec), "--data-root", str(data_root), "--steps", "2", "--batch-size", "4",
                       "--warmup", "0", "--workers", "0", "--eval-batch-size", "8", "--out", str(run), "-q"]) == 0
    pairs = json.loads((run / "eval.json").read_text())["tasks"]["pairs"]
    assert pairs["metric"] == "accuracy" and pairs["n"] == 4
    assert {"accuracy/a", "accuracy/b"} <= set(pairs["details"]["adapted"])


def _nlvr_spec(tmp, fname: str, metrics: str | None = None) -> str:
    """The built-in nlvr spec with small splits (and ``metrics`` replaced), written to ``tmp/fname``."""
    import re

    from mtl_lora_vl.tasks.spec import builtin_spec_dirs

    text = next(d / "nlvr.toml" for d in builtin_spec_dirs() if (d / "nlvr.toml").is_file()).read_text()
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    if metrics is not None:
        text = re.sub(r"^metrics = .*$", f"metrics = {metrics}", text, flags=re.M)
    (tmp / fname).write_text(text)
    return str(tmp / fname)


def test_eval_under_a_spec_heading_consistency_on_rows_without_groups_is_refused_before_scoring(tmp_path, capsys):
    """An nlvr adapter trained with accuracy first, scored by ``eval --tasks SPEC`` whose metrics list consistency
    first, on rows without groups: the start-up check read the adapter's own spec, so both passes ran and then
    failed on a bare "error: consistency" (review 200). It is refused as train refuses the same spec."""
    from mtl_lora_vl.cli import eval_main, train_main

    run = tmp_path / "run"
    assert train_main(["--tasks", _nlvr_spec(tmp_path, "nlvr.toml"), "--steps", "1", "--batch-size", "8",
                       "--warmup", "0", "--workers", "0", "--skip-zero-shot", "--eval-batch-size", "16",
                       "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    scoring = _nlvr_spec(tmp_path, "nlvr_consistency.toml", '["consistency", "accuracy"]')
    assert eval_main(["--adapter", str(run / "adapter"), "--tasks", scoring, "--batch-size", "16",
                      "--out", str(tmp_path / "ev"), "-q"]) == 2
    assert "no evaluation row carries a group" in capsys.readouterr().err


def test_accuracy_is_the_exact_fraction_of_rows_right(clip, monkeypatch):
    """The accuracy was a float32 mean: 5 right of 9 read 0.5555555820465088 in eval.json, not 5/9."""
    kinds, splits = _kinds(clip, ("nlvr",))
    kind, split = kinds["nlvr"], Split(splits["nlvr"].examples[:9])
    labels = [ex.label for ex in split.examples]
    wrong = {0, 1, 2, 3}   # the head's scores: the sign of the label, flipped on four rows
    scores = torch.tensor([(1.0 if y == 1 else -1.0) * (-1.0 if i in wrong else 1.0) for i, y in enumerate(labels)])
    monkeypatch.setattr(kind, "scores", lambda *a, **k: scores)
    out = kind.evaluate(clip, kind.build_head(clip), split, batch_size=4, device="cpu")
    assert out["accuracy"] == 5 / 9
