"""Benchmark: one contrastive training step of open_clip ViT-B-32 with adapters on both towers.

Cases run interleaved (A B C ... A B C ...) in one process so that machine noise hits them alike;
the script prints medians and ratios, activation memory saved for backward (and CUDA peak memory
on a GPU), and writes them as JSON with ``--json PATH``.

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
    ap.add_argument("--warmup", type=int, default=2)
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
    mixed_ids = torch.arange(B) % len(TASKS)

    def ours(method: str, n_up: int = 1) -> torch.nn.Module:
        cfg = mlv.MTLLoRAConfig(tasks=TASKS if method == "mtl_lora" else ["all"], r=args.rank, alpha=2 * args.rank,
                                n_up=n_up, method=method, targets=TARGETS)
        return mlv.attach(build(args.model, device), cfg)

    cases: dict[str, object] = {}
    cases["lora"] = make_train_case(ours("lora"), None, batch, amp, device)
    cases["mtl_lora_single"] = make_train_case(ours("mtl_lora", args.n_up), "vqa", batch, amp, device)
    cases["mtl_lora_mixed"] = make_train_case(ours("mtl_lora", args.n_up), mixed_ids.to(device), batch, amp, device)
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
    for _ in range(args.repeats):
        for name, step in cases.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    ratios = {
        "mtl_lora_mixed / lora": med["mtl_lora_mixed"] / med["lora"],
        "mtl_lora_single / lora": med["mtl_lora_single"] / med["lora"],
        "infer_merged / infer_base": med["infer_merged"] / med["infer_base"],
    }
    if "peft_lora" in med:
        ratios["mtl_lora_mixed / peft_lora"] = med["mtl_lora_mixed"] / med["peft_lora"]
        ratios["mtl_lora_single / peft_lora"] = med["mtl_lora_single"] / med["peft_lora"]
        ratios["lora / peft_lora"] = med["lora"] / med["peft_lora"]
    result = {
        "model": args.model, "device": str(device), "precision": args.precision, "batch_size": B,
        "rank": args.rank, "n_up": args.n_up, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "peft": peft_note,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "memory": memory,
    }
    print(f"{args.model} on {device} ({args.precision}), batch {B}+{B}, r={args.rank}, n_up={args.n_up}, "
          f"{args.repeats} interleaved rounds")
    print(f"{'case':<18}{'median s':>10}{'saved MB':>10}" + ("{:>10}".format("peak MB") if device.type == "cuda" else ""))
    for k, v in med.items():
        line = f"{k:<18}{v:>10.4f}{memory[k]['saved_for_backward_mb']:>10.1f}"
        if device.type == "cuda":
            line += f"{memory[k]['cuda_peak_mb']:>10.1f}"
        print(line)
    for k, v in ratios.items():
        print(f"{k:<30}{v:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
