"""Checks every generative VLM family's tests make the same way: on the bare model (random adapters, mixed-task
gradients, the merged checkpoint) and on its backbone (per-task language-model loss, routed generate, cached
candidate scores, images of their own sizes on one canvas); and the pieces they are made of (random pictures, the
loader's squares and canvases, a biased output head and a spy on generate)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from gemm_rounding import assert_close_at_scale
from PIL import Image
from torch.utils.checkpoint import checkpoint

import mtl_lora_vl as mlv
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.resize import ImageResize, resize_to_square

#: A gradient tensor that is all but zero (idefics3's: 1e-7) carries the rounding of the larger terms cancelled in
#: it (2e-7 there): below this absolute tolerance its own scale is not the measure.
GRAD_ATOL = 1e-5
#: A gradient tensor's terms cancel too, so it is compared at a larger fraction of its own scale than an output:
#: Qwen2-VL's lora_A / lora_B over several images a row are 1.5e-5 off at a scale of 8.3e-4 and 6.9e-5 off at 5.2e-3
#: (1.8e-2, 1.3e-2; 1.3e-11 in float64), where a row on the wrong task moves every tensor by more than 0.15 of it.
GRAD_FRACTION = 5e-2

PROMPTS = ["question: what colour is the circle? answer:", "caption:", "how many objects are there? answer:"]


def perturb_adapters(model: torch.nn.Module, std: float = 0.5, seed: int = 1) -> torch.nn.Module:
    """Add N(0, std²) noise to every adapter tensor (B starts at zero: the tasks would not differ)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * std)
    return model


def assert_gradient_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """One gradient over two GEMM shapes: equal to a fraction of ``expected``'s scale, or to ``GRAD_ATOL``."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    assert_close_at_scale(actual, expected, fraction=max(GRAD_FRACTION, GRAD_ATOL / max(scale, 1e-12)))


def assert_mixed_gradients_are_per_task_sums(model: torch.nn.Module, x: dict, parts: tuple[str, ...]) -> None:
    """Rows [a, b, a] in one forward give each adapter tensor the sum of task a's rows' and task b's row's
    gradients; ``parts`` (module-name fragments) each get some."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad])

    def grads(tasks, rows):
        with mlv.route(model, tasks):
            loss = model(**x).logits[rows, -1].pow(2).sum()
        return [g if g is not None else torch.zeros_like(p)
                for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]

    mixed = grads([0, 1, 0], [0, 1, 2])
    for g, ga, gb in zip(mixed, grads("a", [0, 2]), grads("b", [1])):   # rows alone vs mixed: other GEMM shapes
        assert_gradient_close(g, ga + gb)
    wrong = grads("a", [0, 1, 2])   # row 1 on task a: far off the per-task sums
    assert max((g - w).abs().max() / g.abs().max().clamp_min(1e-6) for g, w in zip(mixed, wrong)) > 0.1
    for part in parts:
        assert any(g.abs().sum() > 0 for g, n in zip(mixed, names) if part in n), part


def prompts(bb, n: int = 3) -> list[str]:
    """``n`` prompts of three lengths, each with the backbone's image placeholder."""
    return [f"{bb.image_token} {PROMPTS[i % len(PROMPTS)]}" for i in range(n)]


def one_image_token_short(bb) -> tuple[torch.Tensor, dict]:
    """``lm_collator``'s batch of two prompts and targets, and its ids with row 0's first image token replaced."""
    b = bb.lm_collator()(prompts(bb, 2), ["red", "blue"])
    ids = b["input_ids"].clone()
    ids[0, (ids[0] == bb.image_token_id).nonzero()[0]] = 5
    return ids, b


def assert_mixed_lm_loss_per_task(bb) -> None:
    """``lm_loss`` under a route [0, 1, 1, 0] gives each row what its task alone gives (and the tasks differ)."""
    p = prompts(bb, 4)
    b = bb.lm_collator()(p, ["red", "a blue square", "two", "a circle"])
    torch.manual_seed(1)
    images = torch.randn(4, 3, bb.image_size, bb.image_size)
    ids = [0, 1, 1, 0]
    with torch.no_grad():
        with mlv.route(bb.model, ids):
            mixed = bb.lm_loss(images, **b)
        for t in (0, 1):
            with mlv.route(bb.model, t):
                alone = bb.lm_loss(images, **b)
            rows = [i for i, x in enumerate(ids) if x == t]
            torch.testing.assert_close(mixed[rows], alone[rows], atol=1e-5, rtol=1e-5)
        with mlv.route(bb.model, 1):
            other = bb.lm_loss(images, **b)
    assert (mixed[[0, 3]] - other[[0, 3]]).abs().max() > 1e-4   # the routes differ


def assert_routed_generate_per_task(bb, beams: int, plain_inputs: Callable[[torch.Tensor, torch.Tensor], dict]) -> None:
    """``bb.generate`` under [0, 1, 0] gives each row its task's text; task 0's equal Hugging Face ``generate`` on
    the model's own inputs (``plain_inputs(images, input_ids)``: the family's pixel inputs), the image and marker
    tokens suppressed as ``bb.generate`` suppresses them (the tiny Gemma 3 writes ``<start_of_image>``)."""
    torch.manual_seed(2)
    images = torch.randn(3, 3, bb.image_size, bb.image_size)
    p = prompts(bb, 3)
    with torch.no_grad():
        each = []
        for t in (0, 1):
            with mlv.route(bb.model, t):
                each.append(bb.generate(images, max_len=4, beam_size=beams, prompts=p))
        with mlv.route(bb.model, [0, 1, 0]):
            routed = bb.generate(images, max_len=4, beam_size=beams, prompts=p)
    assert routed == [each[0][0], each[1][1], each[0][2]]
    batch = bb.lm_collator()(p)
    with torch.no_grad(), mlv.route(bb.model, 0):
        ids = bb.model.generate(**batch, **plain_inputs(images, batch["input_ids"]), max_new_tokens=4,
                                num_beams=beams, do_sample=False, pad_token_id=bb.pad_id, eos_token_id=bb.eos_id,
                                suppress_tokens=bb._banned_ids())   # as bb.generate: no image / marker token
    tok = bb.processor.tokenizer
    assert each[0] == [tok.decode(r, skip_special_tokens=True).strip() for r in ids[:, batch["input_ids"].shape[1]:]]


def cached_and_full_scores(bb) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``sequence_scores`` (one prefill, candidates from the KV cache) and the full computation under [1, 0, 1],
    with what produced them (``images``, ``prompts``, ``candidates``, ``rows``: each candidate's ids)."""
    torch.manual_seed(3)
    images = torch.randn(3, 3, bb.image_size, bb.image_size)
    p = prompts(bb, 3)   # prompts of three lengths: left padding in the prefill
    cands = ["red", "a blue square", "two circles"]
    col = bb.lm_collator()
    rows = [[[*c, bb.eos_id] for c in col.continuation_ids([t] * 3, cands)] for t in col.prompt_texts(p)]
    with torch.no_grad(), mlv.route(bb.model, [1, 0, 1]):
        cached = bb.sequence_scores(images, p, cands)
        full = bb._scores_full(images, p, rows)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    return cached, full, dict(images=images, prompts=p, candidates=cands, rows=rows)


def assert_mixed_route_per_task(model: torch.nn.Module, x: dict, ids: list[int]) -> None:
    """Under ``route(model, ids)`` every row's logits and generated tokens (greedy and 3 beams) are its task's
    alone (tasks "a" and "b"), and the two tasks differ."""
    L = x["input_ids"].shape[1]
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(model, t):
                alone.append(model(**x).logits)
        with mlv.route(model, ids):
            mixed = model(**x).logits
    assert_close_at_scale(mixed, torch.stack([alone[t][i] for i, t in enumerate(ids)]))   # other GEMM shapes
    assert (alone[0] - alone[1]).abs().max() > 1e-3   # the tasks differ
    for beams in (1, 3):
        kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=0,
                  eos_token_id=None)
        with torch.no_grad():
            each = []
            for t in ("a", "b"):
                with mlv.route(model, t):
                    each.append(model.generate(**x, **kw)[:, L:])
            with mlv.route(model, ids):
                routed = model.generate(**x, **kw)[:, L:]
        assert torch.equal(routed, torch.stack([each[t][i] for i, t in enumerate(ids)])), beams


def assert_train_and_eval_commands(folder, tmp_path, capsys) -> None:
    """``train`` (vqa + captioning, 2 steps) on ``hf:folder`` writes its scores, losses and adapter, and
    ``eval --adapter`` gives the same scores."""
    import json

    from test_generative_tasks import _small_spec, assert_eval_repeats

    from mtl_lora_vl.cli import train_main

    out = tmp_path / "run"
    tasks = ",".join(_small_spec(tmp_path, t) for t in ("vqa", "captioning"))
    code = train_main(["--backbone", f"hf:{folder}", "--tasks", tasks, "--steps", "2", "--workers", "0",
                       "--log-every", "1", "--warmup", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    for name, metric in (("vqa", "vqa_accuracy"), ("captioning", "bleu4")):
        r = result["tasks"][name]
        assert r["metric"] == metric and 0 <= r["zero_shot"] <= 1 and 0 <= r["adapted"] <= 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/vqa", "loss/captioning"} <= set(logged[-1])
    assert_eval_repeats(out / "adapter", tmp_path / "ev", result)


def assert_lm_loss_per_row(bb, plain_inputs: Callable[[torch.Tensor, torch.Tensor], dict]) -> None:
    """``lm_loss`` gives each row what the row alone gives and what the plain model's logits give (mean target
    cross-entropy); ``plain_inputs(images, input_ids)``: the family's pixel inputs to the model itself."""
    import torch.nn.functional as F

    p = prompts(bb, 3)
    targets = ["red", "a blue square left of a red circle", "two"]
    b = bb.lm_collator()(p, targets)
    torch.manual_seed(0)
    images = torch.randn(3, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        loss = bb.lm_loss(images, **b)
        assert loss.shape == (3,)
        for r in range(3):
            one = bb.lm_collator()(p[r:r + 1], targets[r:r + 1])
            torch.testing.assert_close(bb.lm_loss(images[r:r + 1], **one)[0], loss[r], atol=1e-5, rtol=1e-5)
        logits = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          **plain_inputs(images, b["input_ids"])).logits
    for r in range(3):
        ce = F.cross_entropy(logits[r, :-1], b["labels"][r, 1:], ignore_index=-100)
        torch.testing.assert_close(loss[r], ce, atol=1e-5, rtol=1e-5)


def assert_peft_export_matches(model: torch.nn.Module, fresh: torch.nn.Module, folder, x: dict) -> None:
    """The PEFT LoRAs ``export_lora`` wrote for tasks "a" and "b" in ``folder``, loaded onto ``fresh`` (the same base
    weights) with ``PeftModel``, give each task's logits of ``model``."""
    import peft

    pm = peft.PeftModel.from_pretrained(fresh, str(folder / "a"), adapter_name="a")
    pm.load_adapter(str(folder / "b"), adapter_name="b")
    pm.eval()
    with torch.no_grad():
        for t in ("a", "b"):
            pm.set_adapter(t)
            with mlv.route(model, t):   # PEFT's LoRA and the routed banks: other GEMM shapes
                assert_close_at_scale(pm(**x).logits, model(**x).logits)
        pm.set_adapter("b")
        with mlv.route(model, "a"):
            b, a = pm(**x).logits, model(**x).logits
    assert (b - a).abs().max() > 0.1 * a.abs().max()   # the tasks differ


def assert_exported_peft_matches(model: torch.nn.Module, make_fresh: Callable[[], torch.nn.Module], folder,
                                 x: dict) -> None:
    """``export_lora(model, ["a", "b"], folder)``, then ``assert_peft_export_matches`` on ``make_fresh()`` called after
    ``torch.manual_seed(0)`` (the base weights of ``model``, made after the same seed)."""
    mlv.export_lora(model, ["a", "b"], folder)
    torch.manual_seed(0)
    assert_peft_export_matches(model, make_fresh(), folder, x)


def assert_merged_checkpoint_matches(m: torch.nn.Module, model_class: type, x: dict, folder, atol: float = 1e-5
                                     ) -> None:
    """``save_merged(m, "b", folder)`` loads with ``model_class.from_pretrained`` with no adapter tensors, and gives
    task b's routed logits and greedy tokens."""
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None)
    with torch.no_grad(), mlv.route(m, "b"):
        logits, tokens = m(**x).logits, m.generate(**x, **kw)
    out = mlv.save_merged(m, "b", folder)
    merged = model_class.from_pretrained(str(out), local_files_only=True).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, logits, atol=atol, rtol=1e-4)
        assert torch.equal(merged.generate(**x, **kw), tokens)


def bias_head(bb, token_id: int, amount: float = 8.0) -> torch.utils.hooks.RemovableHandle:
    """A hook on the output head making ``token_id`` every step's most likely token (``.remove()`` it after)."""
    def hook(module, args, out):
        out = out.clone()
        out[..., token_id] += amount
        return out
    return bb.model.get_output_embeddings().register_forward_hook(hook)


def spy_generate(bb) -> dict:
    """Wrap ``bb.model.generate``: the returned dict's ``"new"`` holds the ids its last call generated."""
    seen: dict = {}
    orig = bb.model.generate

    def generate(*args, **kwargs):
        out = orig(*args, **kwargs)
        seen["new"] = out[:, kwargs["input_ids"].shape[1]:]
        return out

    bb.model.generate = generate
    return seen


# ------------------------------------------------------------------------------------------ images of their own sizes
def pictures(shapes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Random RGB pictures of the given (h, w) shapes."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def loader_images(bb, pics: list[Image.Image]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """What the loader gives for ``pics``: each resized in a worker, the batch on one canvas, normalised."""
    canvas, sizes = pad_images([to_uint8_tensor(p, bb.resize) for p in pics])
    return bb.preprocess_uint8(canvas), [tuple(s) for s in sizes]


def square_images(bb, pics: list[Image.Image], resize: ImageResize | None = None
                  ) -> tuple[list[Image.Image], torch.Tensor]:
    """``pics`` as the loader squares them (``resize``, else ``bb.resize``) and as the device has them, normalised
    (B, 3, S, S)."""
    squares = [resize_to_square(p, resize or bb.resize) for p in pics]
    uint8 = torch.stack([torch.from_numpy(np.asarray(s).copy()).permute(2, 0, 1) for s in squares])
    return squares, bb.preprocess_uint8(uint8)


def own_size(images: torch.Tensor, sizes: list[tuple[int, int]], r: int) -> torch.Tensor:
    """Row ``r``'s image alone, cut to its own size (no canvas)."""
    h, w = sizes[r]
    return images[r:r + 1, :, :h, :w]


def assert_own_size_loss_per_task(bb, images: torch.Tensor, sizes: list, targets: list[str], ids: list[int]) -> dict:
    """Under the mixed route ``ids`` (tasks 0 at rows 0 and 3, 1 elsewhere among them), each row's loss over the
    canvas equals the row alone at its own size under its task; route 1 for all changes rows 0 and 3. Returns the
    collated batch."""
    p = prompts(bb, len(ids))
    b = bb.lm_collator()(p, targets, image_sizes=sizes)
    with torch.no_grad():
        with mlv.route(bb.model, ids):
            mixed = bb.lm_loss(images, **b, image_sizes=sizes)
        for r, t in enumerate(ids):
            one = bb.lm_collator()(p[r:r + 1], targets[r:r + 1], image_sizes=sizes[r:r + 1])
            with mlv.route(bb.model, t):
                alone = bb.lm_loss(own_size(images, sizes, r), **one)
            torch.testing.assert_close(mixed[r], alone[0], atol=1e-5, rtol=1e-5)
        with mlv.route(bb.model, 1):
            other = bb.lm_loss(images, **b, image_sizes=sizes)
    assert (mixed[[0, 3]] - other[[0, 3]]).abs().max() > 1e-4   # the routes differ
    return b


def assert_own_size_generate_per_task(bb, images: torch.Tensor, sizes: list, route: list[int], beams: int) -> None:
    """Routed generate over a canvas of images of their own sizes: each row's text is the row's alone at its own
    size under its task."""
    p = prompts(bb, len(route))
    with torch.no_grad():
        with mlv.route(bb.model, route):
            routed = bb.generate(images, max_len=4, beam_size=beams, prompts=p, image_sizes=sizes)
        alone = []
        for r, t in enumerate(route):
            with mlv.route(bb.model, t):
                alone += bb.generate(own_size(images, sizes, r), max_len=4, beam_size=beams, prompts=p[r:r + 1])
    assert routed == alone


class CheckpointedTower(torch.nn.Module):
    """The vision tower called through a checkpoint of its own (non-reentrant, as torch's checkpoint_wrapper calls
    it; or reentrant): backward calls the tower module again, its hooks included, outside the model's forward. With
    ``no_grad``, the tower is called under ``torch.no_grad()`` instead (a frozen tower: nothing recomputes it)."""

    def __init__(self, tower: torch.nn.Module, reentrant: bool = False, no_grad: bool = False) -> None:
        super().__init__()
        self.tower, self.reentrant, self.no_grad = tower, reentrant, no_grad

    def forward(self, *args, **kwargs):
        if self.no_grad:
            with torch.no_grad():
                return self.tower(*args, **kwargs)
        if self.reentrant:   # (takes no keyword arguments)
            return checkpoint(functools.partial(self.tower, **kwargs), *args, use_reentrant=True)
        return checkpoint(self.tower, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.tower, name)
