"""The package's CUDA paths on a GPU, on the built-in backbones: what the CPU test suite cannot run.

Each check prints PASS or FAIL with its figures and goes on to the next; the script exits 1 if one failed and
writes every figure to ``--json``. Run it on a machine with a GPU (30 s on one H200; ``scripts/check_gpu.sh``
runs it with the rest of a GPU session); the tests run it with ``--device cpu``, so it keeps working:

    python scripts/check_gpu.py --json gpu_checks.json

Checked on ``cuda``: routed ``generate`` of a batch mixing three tasks equals each task's rows alone (greedy and
3 beams, fp32 and bf16 base weights); a merged task's losses equal its route's, and the mixed-batch LM loss each
task's alone (to :func:`tolerance`: fp32 rounding, and the tasks differ by ten times more); a bf16 training step
keeps fp32 adapters with finite, non-zero gradients; activation checkpointing gives the plain gradients; the
built-in CLIP's mixed route equals its tasks alone on both towers. CPU-vs-GPU token agreement is reported, not
checked (cuDNN's TF32 convolutions and other kernels may flip a near tie).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # run from a checkout without installing
    sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser, refusing  # noqa: E402

#: The checks by name, in the order they run (``--only`` picks some): each takes the device, returns its figures.
CHECKS: dict[str, Callable[[str], dict]] = {
    "llava_generate_fp32": lambda d: check_generate(d, "fp32"),
    "llava_generate_bf16": lambda d: check_generate(d, "bf16"),
    "llava_merged_fp32": lambda d: check_merged(d),
    "llava_mixed_loss_fp32": lambda d: check_mixed_loss(d, "fp32"),
    "llava_mixed_loss_bf16": lambda d: check_mixed_loss(d, "bf16"),
    "llava_grad_checkpointing": lambda d: check_grad_checkpointing(d),
    "clip_mixed_route_fp32": lambda d: check_clip(d, "fp32"),
    "clip_mixed_route_bf16": lambda d: check_clip(d, "bf16"),
}


def unknown_checks(flag: str, only: str) -> str | None:
    """What ``--only`` names that is not a check, or None: refused as it is parsed, before torch is imported (and
    before a machine without CUDA is told there is nothing to check)."""
    unknown = [n for n in only.split(",") if n and n not in CHECKS]
    return f"{flag}: unknown check(s) {unknown}; known: {list(CHECKS)}" if unknown else None


def build_parser() -> argparse.ArgumentParser:
    """The options, read before torch is imported (below): ``--help`` and a mistyped flag answer at once."""
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every figure to this file (an earlier result there is replaced, "
                                         "any other file refused)")
    ap.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (the tests' smoke run)")
    ap.add_argument("--only", default="", help="comma-separated check names (default: all): " + ", ".join(CHECKS),
                    **refusing(unknown_checks))
    return ap


if __name__ == "__main__":   # --help and an option error answer here, before the imports below (torch: seconds)
    build_parser().parse_args()

import torch  # noqa: E402

import mtl_lora_vl as mlv  # noqa: E402
from mtl_lora_vl.backbones.loading import load_backbone  # noqa: E402
from mtl_lora_vl.distributed import pick_device  # noqa: E402
from mtl_lora_vl.io.atomic import atomic_file, check_writable_file  # noqa: E402
from mtl_lora_vl.precision import autocast  # noqa: E402

TASKS = ["a", "b", "c"]
PROMPTS = ["{image} question: what colour is the circle? answer:", "{image} caption:",
           "{image} how many objects are there? answer:"]


def prompt(bb, i: int) -> str:
    return PROMPTS[i % len(PROMPTS)].format(image=bb.image_token)


def perturbed(bb, seed: int = 1, std: float = 0.3):
    """Attach three tasks and give their adapters random values (B starts at zero: the tasks would not differ)."""
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=8, n_up=3))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * std)
    return bb


def llava(device: str, base_dtype: str):
    return perturbed(load_backbone("builtin-llava", device=device, base_dtype=base_dtype))


def images_for(bb, n: int, device: str, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g).to(device)


def routed_vs_alone(bb, images: torch.Tensor, beams: int, dtype: torch.dtype) -> dict:
    ids = [i % 3 for i in range(images.shape[0])]
    prompts = [prompt(bb, i) for i in range(images.shape[0])]
    with torch.no_grad(), autocast(images.device, dtype):
        alone = []
        for t in range(3):
            with mlv.route(bb.model, t):
                alone.append(bb.generate(images, max_len=8, beam_size=beams, prompts=prompts))
        with mlv.route(bb.model, ids):
            routed = bb.generate(images, max_len=8, beam_size=beams, prompts=prompts)
    want = [alone[t][i] for i, t in enumerate(ids)]
    same = sum(a == b for a, b in zip(routed, want))
    differ = sum(len({alone[t][i] for t in range(3)}) > 1 for i in range(len(ids)))
    return {"rows": len(ids), "rows_equal": same, "rows_where_tasks_differ": differ, "routed": routed,
            "passed": same == len(ids) and differ > 0}


def cpu_copy(bb):
    """``bb``'s model on the CPU in fp32, its adapters' values included: attach draws A and w from the global
    generator of the device they are made on, so a second ``llava("cpu")`` is a model with other adapters."""
    cpu = llava("cpu", "fp32")
    cpu.model.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in bb.model.state_dict().items()})
    return cpu


def check_generate(device: str, dtype_name: str, compare_cpu: bool | None = None) -> dict:
    """Routed generation equals each task's alone; ``compare_cpu`` (default: off the CPU, fp32) also reports how
    many greedy rows the same model gives on the CPU."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    bb = llava(device, dtype_name)
    images = images_for(bb, 6, device)
    out = {f"beams{b}": routed_vs_alone(bb, images, b, dtype) for b in (1, 3)}
    if compare_cpu is None:
        compare_cpu = dtype_name == "fp32" and device != "cpu"
    if compare_cpu:   # reported only
        cpu_out = routed_vs_alone(cpu_copy(bb), images.cpu(), 1, torch.float32)
        out["cpu_rows_equal_greedy"] = sum(a == b for a, b in zip(cpu_out["routed"], out["beams1"]["routed"]))
    out["passed"] = all(v["passed"] for k, v in out.items() if k.startswith("beams"))
    return out


def tolerance(device: str, dtype: torch.dtype, same_kernels_on_cpu: bool = True) -> float:
    """How far two computations of one loss (~6.5 here) may differ: fp32 rounding. A mixed route on the CPU runs
    the kernels of each task alone: 1e-5 (0.0 measured). On CUDA its batched per-row product and a task's single
    GEMM are other cuBLAS kernels: 3.8e-4 measured on one H200 (tokens equal row for row); a merged weight W + ΔW
    rounds otherwise than W x + ΔW x: 1.3e-3 on the CPU. fp32 rounding alone moves these losses by 3e-3 (fp32
    against fp64 on the CPU), and the tasks differ by over 1 (``task_gap``, checked to be 10 times the bound)."""
    if dtype != torch.float32:
        return 5e-2
    return 1e-5 if same_kernels_on_cpu and torch.device(device).type == "cpu" else 1e-2


def check_merged(device: str) -> dict:
    """Task "b" merged into the base weights gives its route's losses; generated tokens are reported."""
    bb = llava(device, "fp32")
    images, b = lm_batch(bb, device)
    prompts = [prompt(bb, i) for i in range(images.shape[0])]
    with torch.no_grad():
        with mlv.route(bb.model, "b"):
            routed, routed_text = bb.lm_loss(images, **b), bb.generate(images, max_len=8, prompts=prompts)
        with mlv.route(bb.model, "a"):
            other = bb.lm_loss(images, **b)
        mlv.merge(bb.model, "b")
        merged, merged_text = bb.lm_loss(images, **b), bb.generate(images, max_len=8, prompts=prompts)
        mlv.unmerge(bb.model)
    diff, gap = float((merged - routed).abs().max()), float((other - routed).abs().max())
    return {"max_abs_loss_diff": diff, "task_gap": gap, "rows_equal_tokens": sum(a == c for a, c in
            zip(merged_text, routed_text)), "passed": diff <= tolerance(device, torch.float32, False) < gap / 10}


def lm_batch(bb, device: str, n: int = 6) -> tuple[torch.Tensor, dict]:
    targets = ["red", "a blue square and a red circle", "two", "a circle", "green", "three"]
    b = bb.lm_collator()([prompt(bb, i) for i in range(n)], targets[:n])
    return images_for(bb, n, device, seed=3), {k: v.to(device) for k, v in b.items()}


def check_mixed_loss(device: str, dtype_name: str) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    bb = llava(device, dtype_name)
    images, b = lm_batch(bb, device)
    ids = [0, 1, 2, 2, 1, 0]
    bb.model.train()
    with autocast(device, dtype):
        with mlv.route(bb.model, ids):
            mixed = bb.lm_loss(images, **b)
        alone = torch.empty_like(mixed)
        each = []
        with torch.no_grad():
            for t in range(3):
                with mlv.route(bb.model, t):
                    rows = [i for i, x in enumerate(ids) if x == t]
                    each.append(bb.lm_loss(images, **b))
                    alone[rows] = each[-1][rows]
    diff = float((mixed.detach() - alone).abs().max())
    gap = float(min((each[a] - each[c]).abs().max() for a, c in ((0, 1), (0, 2), (1, 2))))
    mixed.mean().backward()
    grads = [(n, p.grad) for n, p in bb.model.named_parameters() if p.requires_grad]
    out = {"max_abs_loss_diff": diff, "task_gap": gap, "loss": float(mixed.detach().mean()),
           "adapter_tensors": len(grads),
           "grads_fp32": all(g is not None and g.dtype == torch.float32 for _, g in grads),
           "grads_finite": all(g is not None and bool(torch.isfinite(g).all()) for _, g in grads),
           "grads_nonzero": sum(g is not None and bool(g.abs().sum() > 0) for _, g in grads),
           "base_dtype": str(next(p for p in bb.model.parameters() if not p.requires_grad).dtype)}
    out["passed"] = (diff <= tolerance(device, dtype) < gap / 10 and out["grads_fp32"] and out["grads_finite"]
                     and out["grads_nonzero"] > 0)
    return out


def peak_mb(device: str) -> float | None:
    """CUDA peak memory of ``device`` itself (``cuda:N``), not of the current device; None off CUDA."""
    d = torch.device(device)
    return torch.cuda.max_memory_allocated(d) / 2**20 if d.type == "cuda" else None


def check_grad_checkpointing(device: str) -> dict:
    bb = llava(device, "fp32")
    images, b = lm_batch(bb, device)
    params = [p for p in bb.model.parameters() if p.requires_grad]
    bb.model.train()

    def grads(on: bool) -> list[torch.Tensor]:
        bb.set_grad_checkpointing(on)
        with mlv.route(bb.model, [0, 1, 2, 2, 1, 0]):
            loss = bb.lm_loss(images, **b).mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    def diff(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
        return max(float((a - c).abs().max()) for a, c in zip(x, y) if a is not None)

    # A layer's first forward under a mix of tasks forms its M_t alone, later ones with its group (one batched
    # product): cuBLAS rounds the two differently, and these perturbed adapters amplify that (one H100: 4.7 on
    # gradients up to 766; 0.0 on the CPU). So both compared steps are later ones; the first is reported.
    first = grads(False)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    plain = grads(False)
    peak_plain = peak_mb(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    ckpt = grads(True)
    d = diff(plain, ckpt)
    return {"max_abs_grad_diff": d, "first_step_vs_later": diff(first, plain), "peak_plain_mb": peak_plain,
            "peak_ckpt_mb": peak_mb(device), "passed": d <= 1e-5}


def check_clip(device: str, dtype_name: str) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    bb = perturbed(load_backbone("builtin", device=device))
    images = images_for(bb, 6, device)
    words = bb.tokenizer(["a red circle", "two blue squares", "a green triangle"] * 2)
    tokens, cut = words.to(device), bb.drop_text_padding(words).to(device)   # (cut: text at its own width)
    ids = [0, 1, 2, 2, 1, 0]
    out = {}
    with torch.no_grad(), autocast(device, dtype):
        with mlv.route(bb.model, ids):   # the sliced causal mask through the device's attention kernels
            out["text_cut_max_abs_diff"] = float(
                (bb.encode_text(cut).float() - bb.encode_text(tokens).float()).abs().max())
        for what, fn, x in (("image", bb.encode_image, images), ("text", bb.encode_text, tokens)):
            with mlv.route(bb.model, ids):
                mixed = fn(x).float()
            alone = torch.empty_like(mixed)
            for t in range(3):
                with mlv.route(bb.model, t):
                    rows = [i for i, x_ in enumerate(ids) if x_ == t]
                    alone[rows] = fn(x).float()[rows]
            out[f"{what}_max_abs_diff"] = float((mixed - alone).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    out["passed"] = max(out.values()) <= tol
    return out


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check_gpu: no CUDA device; nothing to check (--device cpu runs the same checks on the CPU)",
              file=sys.stderr)
        return 2
    try:   # a bad name or a GPU this machine lacks: one line, not a traceback per check
        args.device = str(pick_device(args.device))
    except RuntimeError as e:
        ap.error(str(e))
    if args.json:   # checked now: a place no file can be written failed after every check had run
        try:
            replacing = check_writable_file(args.json, "--json", own_keys=("device",))
        except OSError as e:
            ap.error(str(e))
        if replacing:   # a file of another kind was refused above
            print(f"check_gpu: --json {args.json} holds earlier results; this run replaces them", flush=True)
    names = [n for n in args.only.split(",") if n] or list(CHECKS)   # (unknown names refused as it was parsed)
    name_of = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    results: dict[str, dict] = {"device": {"name": name_of, "torch": torch.__version__, "passed": True}}
    for name in names:
        t0 = time.perf_counter()
        try:
            res = CHECKS[name](args.device)
        except Exception:
            res = {"passed": False, "error": traceback.format_exc()}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = res
        shown = {k: v for k, v in res.items() if k not in ("error",) and not isinstance(v, dict)}
        print(f"{'PASS' if res['passed'] else 'FAIL'} {name}: {shown}", flush=True)
        if "error" in res:
            print(res["error"], flush=True)
        for k, v in res.items():
            if isinstance(v, dict):
                print(f"     {k}: {v}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.json:
        with atomic_file(args.json, overwrite=True, what="--json") as tmp:
            tmp.write_text(json.dumps(results, indent=1))
    return 0 if all(r.get("passed", True) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
