"""Multi-task loader: batch layout and dtypes, tokens and pixels per row, device normalisation, resume."""

from __future__ import annotations

import math

import pytest
import torch
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.data.images import ImageError, to_uint8_tensor
from mtl_lora_vl.data.loader import MultiTaskLoader, iter_image_batches, task_views, to_device
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.tasks import build_kind, resolve_tasks

TASKS = "vqa,retrieval,caption_cls"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def tasks(clip):
    specs = resolve_tasks(TASKS)
    splits = [world.build_split(s.kind, "train", n=6, seed=0) for s in specs]
    kinds = [build_kind(s, sp, clip) for s, sp in zip(specs, splits)]
    return specs, kinds, splits


def _loader(clip, tasks, **kw):
    _, kinds, splits = tasks
    kw.setdefault("batch_size", 12)
    return MultiTaskLoader(kinds, splits, clip, **kw)


def test_mixed_batch_layout(clip, tasks):
    specs, kinds, splits = tasks
    batch = next(iter(_loader(clip, tasks, steps=1)))
    b = 12
    assert batch["task_ids"].dtype == torch.long and batch["task_ids"].shape == (b,)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (b, 3, 32, 32)
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (b, clip.context_length)
    assert batch["task_ids"].tolist() == sorted(batch["task_ids"].tolist())
    assert set(batch["tasks"]) == {"vqa", "retrieval", "caption_cls"}        # every task in a mixed batch
    text_rows = batch["text_rows"].tolist()
    covered = []
    for t, (kind, split) in enumerate(zip(kinds, splits)):
        view = batch["tasks"][kind.name]
        rows = view["rows"].tolist()
        covered += rows
        assert rows == list(range(rows[0], rows[0] + len(rows)))              # contiguous
        assert all(batch["task_ids"][r] == t for r in rows)
        for r in rows:
            ex = split.examples[int(batch["indices"][r])]
            assert torch.equal(batch["images"][r], to_uint8_tensor(ex.image, 32))
            text = kind.sample_text(ex)
            if text is not None:
                assert torch.equal(batch["tokens"][r], clip.tokenizer([text])[0])
        if kind.uses_text:
            assert [text_rows[i] for i in view["text_index"].tolist()] == rows
        else:
            assert "text_index" not in view and not set(rows) & set(text_rows)
    assert sorted(covered) == list(range(b))
    vqa, ret, cls = (batch["tasks"][n] for n in ("vqa", "retrieval", "caption_cls"))
    assert vqa["targets"].dtype == torch.float32 and vqa["targets"].shape[1] == len(kinds[0].answers)
    assert ret["image_key"].dtype == torch.long and cls["labels"].dtype == torch.long
    assert cls["labels"].tolist() == [splits[2].examples[int(batch["indices"][r])].label
                                      for r in cls["rows"].tolist()]


def test_homogeneous_batches_hold_one_task(clip, tasks):
    for batch in _loader(clip, tasks, steps=3, mode="homogeneous", strategy="round_robin"):
        assert len(batch["tasks"]) == 1 and batch["task_ids"].unique().numel() == 1


def test_to_device_normalises_like_a_float_reference(clip, tasks):
    batch = next(iter(_loader(clip, tasks, steps=1)))
    ref = (batch["images"].float() / 255.0 - torch.tensor(clip.mean).view(1, 3, 1, 1)) / \
        torch.tensor(clip.std).view(1, 3, 1, 1)
    out = to_device(batch, "cpu", torch.float32, clip)
    assert out["images"].dtype == torch.float32 and torch.allclose(out["images"], ref, atol=1e-6)
    assert torch.equal(out["tasks"]["vqa"]["targets"], batch["tasks"]["vqa"]["targets"])
    half = to_device(batch, "cpu", torch.bfloat16, clip)
    assert half["images"].dtype == torch.bfloat16
    assert torch.allclose(half["images"].float(), ref, atol=3e-2)
    assert half["task_ids"].dtype == torch.long


def test_one_step_runs_each_tower_once(clip, tasks):
    specs, kinds, _ = tasks
    batch = to_device(next(iter(_loader(clip, tasks, steps=1))), "cpu", torch.float32, clip)
    heads = {k.name: k.build_head(clip) for k in kinds}
    image_emb = clip.encode_image(batch["images"])
    text_emb = clip.encode_text(batch["tokens"][batch["text_rows"]])
    total = 0.0
    for (name, rows), kind in zip(task_views(batch), kinds):
        assert name == kind.name and rows["images"].shape[0] == rows["rows"].numel()
        t = text_emb[rows["text_index"]] if kind.uses_text else None
        loss = kind.loss(heads[name], clip, rows, image_emb[rows["rows"]], t)
        assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
        total = total + loss
    total.backward()
    assert heads["caption_cls"].weight.grad is not None and heads["vqa"].answer_weight.grad is not None


def test_workers_give_the_same_batches(clip, tasks):
    a = [b["indices"].tolist() for b in _loader(clip, tasks, steps=3)]
    wl = _loader(clip, tasks, steps=3, num_workers=1)
    assert wl.loader.persistent_workers
    b = [b["indices"].tolist() for b in wl]
    assert a == b


def test_resume_continues_after_the_consumed_batches(clip, tasks):
    full = [b["indices"].tolist() for b in _loader(clip, tasks, steps=6, seed=3)]
    first = _loader(clip, tasks, steps=6, seed=3, num_workers=1)   # workers prefetch ahead of us
    it = iter(first)
    seen = [next(it)["indices"].tolist() for _ in range(2)]
    state = first.state_dict()
    assert state["step"] == 2 and seen == full[:2]
    assert [b["indices"].tolist() for b in first] == full[2:]       # a new iteration continues too
    resumed = _loader(clip, tasks, steps=6, seed=3)
    resumed.load_state_dict(state)
    assert len(resumed) == 4
    assert [b["indices"].tolist() for b in resumed] == full[2:]


def test_eval_image_batches_in_order(clip):
    split = world.build_split("classification", "val", n=5, seed=0)
    batches = list(iter_image_batches(clip, split.examples, batch_size=2, device="cpu", dtype=torch.float32))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    ref = clip.preprocess_uint8(torch.stack([to_uint8_tensor(e.image, 32) for e in split.examples]))
    assert torch.allclose(torch.cat(batches), ref)


def test_a_broken_image_names_the_example(clip, tasks, tmp_path):
    _, kinds, _ = tasks
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    split = Split([Example(str(bad), "img-42", label=0)], class_names=world.class_names())
    loader = MultiTaskLoader([kinds[2]], [split], clip, batch_size=1, steps=1)
    with pytest.raises(ImageError, match="img-42"):
        next(iter(loader))


def test_loader_argument_errors(clip, tasks):
    _, kinds, splits = tasks
    with pytest.raises(ValueError, match="2 task kinds but 1 splits"):
        MultiTaskLoader(kinds[:2], splits[:1], clip, batch_size=4)
    with pytest.raises(ValueError, match="duplicate task names"):
        MultiTaskLoader([kinds[0], kinds[0]], [splits[0], splits[0]], clip, batch_size=4)


def test_workers_survive_a_stop_signal_sent_to_the_process_group(clip, tasks):
    """SIGTERM to every process (``kill -- -PGID``, ``timeout``, a scheduler) reaches the workers too; they
    ignore it, so the main process can finish its step and save (before: 'DataLoader worker is killed')."""
    import os
    import signal
    import time

    want = [b["indices"].tolist() for b in _loader(clip, tasks, steps=4)]
    wl = _loader(clip, tasks, steps=4, num_workers=1)
    it = iter(wl)
    got = [next(it)["indices"].tolist()]
    for w in wl.loader._iterator._workers:   # persistent workers: the loader keeps its iterator
        os.kill(w.pid, signal.SIGTERM)
    time.sleep(0.5)
    got += [b["indices"].tolist() for b in it]
    assert got == want
