"""Benchmark: one contrastive training step of open_clip ViT-B-32 with adapters on both towers.

Cases run interleaved (A B C ... A B C ...) in one process so that machine noise hits them alike;
the script prints medians (wall clock, and process CPU time, which a loaded machine disturbs less)
and the ratios issue 8 targets, activation memory saved for backward (and CUDA peak memory on a GPU),
and writes them as JSON with ``--json PATH``.

Mixed MTL-LoRA batches run in two row orders: ``grouped`` (rows sorted by task, as the loader makes
them; the route comes from segments, as in training) and ``interleaved`` (task of row i = i mod 3, the
worst order an API user can pass).

    python scripts/bench_adapters.py --repeats 7 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import open_clip
import torch
import torch.nn.functional as F

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.routing import Route

TARGETS = {"image": [r"^visual\.transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"],
           "text": [r"^transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"]}
TASKS = ["vqa", "retrieval", "caption_cls"]


def build(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).to(device)


def contrastive_loss(model, images, texts) -> torch.Tensor:
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(texts), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class SavedBytes:
    """Bytes of distinct tensors autograd saves for backward during one forward (activation memory)."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            self.seen[key] = max(self.seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    @property
    def mb(self) -> float:
        return sum(self.seen.values()) / 2**20


def make_train_case(model, route_arg, batch, amp_dtype, device):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    images, texts = batch

    def step(measure: SavedBytes | None = None):
        ctx = mlv.route(model, route_arg) if route_arg is not None else _null()
        with ctx, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if measure is not None:
                with torch.autograd.graph.saved_tensors_hooks(measure.pack, lambda t: t):
                    loss = contrastive_loss(model, images, texts)
            else:
                loss = contrastive_loss(model, images, texts)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def make_infer_case(model, batch, amp_dtype, device):
    images, texts = batch

    @torch.no_grad()
    def step(measure=None):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model.encode_image(images)
            model.encode_text(texts)

    return step


def _target(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"{'<= ' + format(target, '.2f'):>9}{' ok' if value <= target else ' MISS'}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name (random init, no download)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--n-up", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per case (median reported)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps per case before the (also untimed) step that measures memory")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch default)")
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT baseline")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    probe = build(args.model, device)
    size = probe.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx = probe.context_length
    del probe
    g = torch.Generator().manual_seed(0)
    B = args.batch_size
    batch = (torch.randn(B, 3, size, size, generator=g).to(device),
             torch.randint(1, 49000, (B, ctx), generator=g).to(device))
    interleaved_ids = torch.arange(B) % len(TASKS)
    grouped = Route.from_ids(sorted(interleaved_ids.tolist()))  # what the loader's segments give

    def ours(method: str, n_up: int = 1) -> torch.nn.Module:
        cfg = mlv.MTLLoRAConfig(tasks=TASKS if method == "mtl_lora" else ["all"], r=args.rank, alpha=2 * args.rank,
                                n_up=n_up, method=method, targets=TARGETS)
        return mlv.attach(build(args.model, device), cfg)

    cases: dict[str, object] = {}
    cases["lora"] = make_train_case(ours("lora"), None, batch, amp, device)
    cases["mtl_lora_single"] = make_train_case(ours("mtl_lora", args.n_up), "vqa", batch, amp, device)
    cases["mtl_lora_grouped"] = make_train_case(ours("mtl_lora", args.n_up), grouped, batch, amp, device)
    cases["mtl_lora_interleaved"] = make_train_case(ours("mtl_lora", args.n_up), interleaved_ids.to(device), batch,
                                                    amp, device)
    peft_note = None
    if not args.no_peft:
        try:
            import peft

            pcfg = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                   target_modules=r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$")
            pm = peft.inject_adapter_in_model(pcfg, build(args.model, device))
            for n, p in pm.named_parameters():
                p.requires_grad_("lora_" in n)
            cases["peft_lora"] = make_train_case(pm, None, batch, amp, device)
            peft_note = f"peft {peft.__version__}"
        except ImportError:
            peft_note = "peft not installed"
    base = build(args.model, device).eval()
    merged = ours("mtl_lora", args.n_up).eval()
    with torch.no_grad():
        for bank in merged._mtl_lora.layers.values():
            bank.lora_B.normal_(std=0.02)  # a non-trivial update to merge
    mlv.merge(merged, "retrieval")
    cases["infer_base"] = make_infer_case(base, batch, amp, device)
    cases["infer_merged"] = make_infer_case(merged, batch, amp, device)

    memory = {}
    for name, step in cases.items():
        for _ in range(args.warmup):
            step()
        m = SavedBytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(m)
        sync(device)
        memory[name] = {"saved_for_backward_mb": round(m.mb, 1)}
        if device.type == "cuda":
            memory[name]["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, step in cases.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    # (name, numerator, denominator, target): step-time ratios the issue asks for, then memory.
    checks = [("mixed grouped / lora", "mtl_lora_grouped", "lora", 1.03),
              ("mixed interleaved / lora", "mtl_lora_interleaved", "lora", 1.05),
              ("one task / lora", "mtl_lora_single", "lora", 1.02),
              ("mixed grouped / peft_lora", "mtl_lora_grouped", "peft_lora", 0.80),
              ("mixed interleaved / peft_lora", "mtl_lora_interleaved", "peft_lora", 0.80),
              ("lora / peft_lora", "lora", "peft_lora", None),
              ("infer merged / base", "infer_merged", "infer_base", None)]
    ratios, ratios_cpu = {}, {}
    for label, a, b, _ in checks:
        if a in med and b in med:
            ratios[label] = med[a] / med[b]
            ratios_cpu[label] = med_cpu[a] / med_cpu[b]
    mem_ratios = {f"saved MB {k} / lora": memory[k]["saved_for_backward_mb"] / memory["lora"]["saved_for_backward_mb"]
                  for k in ("mtl_lora_grouped", "mtl_lora_interleaved", "mtl_lora_single")}
    targets = {label: t for label, _, _, t in checks if t is not None}
    targets.update({k: 1.02 for k in mem_ratios if "single" not in k})
    result = {
        "model": args.model, "device": str(device), "precision": args.precision, "batch_size": B,
        "rank": args.rank, "n_up": args.n_up, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "peft": peft_note,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in med_cpu.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "ratios_cpu_time": {k: round(v, 3) for k, v in ratios_cpu.items()},
        "memory": memory,
        "memory_ratios": {k: round(v, 3) for k, v in mem_ratios.items()},
        "targets": targets,
    }
    print(f"{args.model} on {device} ({args.precision}), batch {B}+{B}, r={args.rank}, n_up={args.n_up}, "
          f"{args.repeats} interleaved rounds, {torch.get_num_threads()} threads")
    print(f"{'case':<22}{'median s':>10}{'cpu s':>10}{'saved MB':>10}"
          + ("{:>10}".format("peak MB") if device.type == "cuda" else ""))
    for k, v in med.items():
        line = f"{k:<22}{v:>10.4f}{med_cpu[k]:>10.4f}{memory[k]['saved_for_backward_mb']:>10.1f}"
        if device.type == "cuda":
            line += f"{memory[k]['cuda_peak_mb']:>10.1f}"
        print(line)
    print(f"{'ratio':<40}{'wall':>8}{'cpu':>8}{'target':>9}")
    for k, v in ratios.items():
        print(f"{k:<40}{v:>8.3f}{ratios_cpu[k]:>8.3f}{_target(v, targets.get(k))}")
    for k, v in mem_ratios.items():
        print(f"{k:<40}{v:>8.3f}{'':>8}{_target(v, targets.get(k))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
