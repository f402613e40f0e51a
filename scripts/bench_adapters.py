"""Benchmark: one training step with adapters on both towers -- open_clip ViT-B-32 (contrastive loss) or a
LLaVA-style model (language-model loss).

Cases run interleaved in one process so that machine noise hits them alike: each round starts one case later,
and every other round runs in reverse (A B C, then C B A's rotation, ...), so that no case always runs first or
always follows the same case (the order of every round is in the JSON);
the script prints medians (wall clock, and process CPU time, which a loaded machine disturbs less)
and the ratios issues 8 and 9 target -- as ratios of the medians and as the median of the round-by-round
ratios with its quartiles ("paired": two cases of one round ran seconds apart, so a slow spell of the
machine touches both; the verdict against a target uses it) -- activation memory saved for backward (and CUDA peak
memory on a GPU), and the number of aten operators each step dispatches (kernels launched: the cost a loaded CPU
or a launch-bound GPU pays per op, which timing noise cannot blur), and writes them as JSON with
``--json PATH``.

Mixed MTL-LoRA batches run in two row orders: ``grouped`` (rows sorted by task, as the loader makes
them; the route comes from segments, as in training) and ``interleaved`` (task of row i = i mod 3, the
worst order an API user can pass). Both routes are built once on the host: ids given as a device tensor
would add a device-to-host read per step on a GPU, which is not routing's cost.

    python scripts/bench_adapters.py --repeats 7 --json bench.json
    python scripts/bench_adapters.py --case llava --repeats 20        # ~1.5 s steps on 2 CPU cores
    python scripts/bench_adapters.py --case llava --vision-layers 4 --lm-layers 4 --lm-width 512 \
        --repeats 30 --steps-per-round 3                                # a smaller model: short steps
    python scripts/bench_adapters.py --case llava --device cuda --precision bf16   # bf16 base + autocast
    python scripts/bench_adapters.py --case llava --vision-width 64 --lm-width 64 --vocab 1000 --threads 1 \
        --repeats 15 --steps-per-round 5     # host-bound, as a GPU at these sizes: what the Python costs

The LLaVA case (random init, no download: a CLIP vision tower of ``--vision-width`` (768, ViT-B/32's), 224 px and
patch 32, with ``--vision-layers`` layers, and a Llama language model of ``--lm-layers`` x ``--lm-width``; the defaults,
a ViT-B/32-sized tower and an 8 x 1024 Llama, step in 1.5 s on two CPU cores -- on a GPU add e.g. ``--vocab 32000
--batch-size 16``) compares mixed-task MTL-LoRA steps with our ``lora`` and
PEFT LoRA on one adapter (same rank and targets), each also with activation checkpointing, and two controls:
the mixed case's own model stepped on one task's rows (mixed / one task: what routing a mixed batch costs,
whichever model copy is faster) and a second copy of the ``lora`` model (lora copy / lora: the spread between two
copies of one computation, a floor under every other ratio). With a non-fp32
``--precision`` its base weights are in that dtype (adapters stay fp32) and the step runs under autocast
(fp16: through a GradScaler, as the trainer's). Each step is the trainer's optimizer step: the gradient norm clipped to
``--grad-clip`` (the trainer's default, 1.0; 0 turns it off, as steps were timed before the option), then AdamW.
On a CPU, memory is what autograd saves for backward plus the inputs that checkpointed layers keep for
their recomputation; on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # run from a checkout without installing
    sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser, at_least  # noqa: E402

from mtl_lora_vl.options import TrainOptions  # noqa: E402

#: What a count below 1 is told (checked as it is parsed, before torch is imported).
POSITIVE = at_least(1, "{flag} must be at least 1, got {value}")


def build_parser() -> argparse.ArgumentParser:
    """The options, read before torch and open_clip are imported (below): ``--help`` and a mistyped flag answer at
    once."""
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["clip", "llava"], default="clip",
                    help="clip: an open_clip model, both towers; llava: a LLaVA (vision tower + LM) (default clip)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name (random init, no download)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 (clip) / 4 (llava)", **POSITIVE)
    ap.add_argument("--rank", type=int, default=8, help="adapter rank r of every method (default 8)", **POSITIVE)
    ap.add_argument("--n-up", type=int, default=3, help="MTL-LoRA's shared up-projections B_i (default 3)", **POSITIVE)
    ap.add_argument("--vision-layers", type=int, default=12,
                    help="llava: CLIP vision layers (12 = ViT-B/32's)", **POSITIVE)
    ap.add_argument("--vision-width", type=int, default=768,
                    help="llava: CLIP vision width (768 = ViT-B/32; small widths with --lm-width 64 make a CPU step "
                         "host-bound, as a GPU's: what each case's Python and operator count cost)", **POSITIVE)
    ap.add_argument("--lm-layers", type=int, default=8, help="llava: language-model layers", **POSITIVE)
    ap.add_argument("--lm-width", type=int, default=1024, help="llava: language-model width", **POSITIVE)
    ap.add_argument("--vocab", type=int, default=8000, help="llava: vocabulary size", **POSITIVE)
    ap.add_argument("--text-len", type=int, default=32, help="llava: text tokens per row (after 49 image tokens)",
                    **POSITIVE)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per case (median reported)", **POSITIVE)
    ap.add_argument("--steps-per-round", type=int, default=1,
                    help="steps per case and round, timed together (more smooths short steps' jitter)", **POSITIVE)
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps per case before the (also untimed) step that measures memory (at least 1: "
                         "a case's first step creates the optimizer state and forms state the later steps reuse)",
                    # the measured step would be the first: 2.1-2.4x the operators of a later one, mixed
                    **at_least(1, "--warmup must be at least 1 (a case's first step creates the optimizer state and "
                                  "forms what later steps reuse, so the counts would not be a step's), got {value}"))
    ap.add_argument("--device", default=None,   # None: cuda where there is one, asked of torch once parsed (main)
                    help="cpu | cuda | cuda:N (default cuda where there is one)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="bf16 / fp16: base weights in that dtype under autocast, adapters fp32 (default fp32)")
    ap.add_argument("--grad-clip", type=float, default=TrainOptions().grad_clip,
                    help="clip each step's gradient norm to this, as the trainer's --grad-clip does (default "
                         f"{TrainOptions().grad_clip:g}, the trainer's; 0 = off: the step timed before this option)",
                    **at_least(0, "--grad-clip must be >= 0 (0 = no clipping), got {value}"))   # (nan too)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch default)",
                    **at_least(0, "--threads must be >= 0"))
    ap.add_argument("--json", default=None, help="write results to this JSON file (an earlier result there is "
                                                        "replaced, any other file refused)")
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT baseline")
    ap.add_argument("--profile", action="store_true",
                    help="on a GPU: each case's kernel time in one step (torch.profiler, after the timed rounds), "
                         "beside its wall time; kernels on several streams add up, so it is kernel time, not busy time")
    ap.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                    help="torch.compile every case's training forward with BACKEND, a torch.compile backend name: "
                         "inductor when none is named (--compile alone or followed by another flag), else e.g. "
                         "aot_eager, eager or cudagraphs (torch.compiler.list_backends(exclude_tags=()) lists them); "
                         "compiled in the warm-up steps: launches and Python mostly gone, what is left is each "
                         "method's kernels")
    return ap


if __name__ == "__main__":   # --help and an option error answer here, before the imports below (torch: seconds)
    build_parser().parse_args()

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import mtl_lora_vl as mlv  # noqa: E402
from mtl_lora_vl.adapters.routing import Route  # noqa: E402
from mtl_lora_vl.backbones.hf import hf_grad_checkpointing  # noqa: E402
from mtl_lora_vl.distributed import pick_device  # noqa: E402
from mtl_lora_vl.io.atomic import atomic_file, check_writable_file  # noqa: E402
from mtl_lora_vl.training.optim import Optimization, adamw  # noqa: E402
from mtl_lora_vl.training.step import optimizer_step  # noqa: E402

TARGETS = {"image": [r"^visual\.transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"],
           "text": [r"^transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"]}
TASKS = ["vqa", "retrieval", "caption_cls"]


def build(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Random-init open_clip model; ``dtype``: its base weights' (a bf16 / fp16 run keeps them in that dtype, as
    the LLaVA case and the trainer on a GPU do; adapters attached after stay fp32)."""
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).to(device=device, dtype=dtype)


def contrastive_loss(model, images, texts) -> torch.Tensor:
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(texts), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class SavedBytes:
    """Bytes of distinct tensors autograd saves for backward during one forward (activation memory), plus
    the inputs that activation-checkpointed layers keep for recomputing (``hold``). Tensors that share
    storage with a parameter or buffer of the model (``skip``: the frozen weights matmuls save to compute
    input gradients) are counted apart, in ``weights_mb``: they are resident anyway, not activations."""

    def __init__(self):
        self.skip: set[int] = set()
        self.seen: dict[int, int] = {}
        self.weights: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            into = self.weights if key in self.skip else self.seen
            into[key] = max(into.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    def hold(self, module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.pack(args[0])

    @property
    def mb(self) -> float:
        return sum(self.seen.values()) / 2**20

    @property
    def weights_mb(self) -> float:
        return sum(self.weights.values()) / 2**20


class OpCount(TorchDispatchMode):
    """aten operators dispatched during one step (forward, backward, optimizer step): a count of the
    kernels each case launches, which a loaded machine cannot disturb (views included)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def make_train_case(model, route_arg, batch, amp_dtype, device, loss_fn=contrastive_loss, compile: str | None = None,
                    grad_clip: float = TrainOptions().grad_clip):
    """One case's training step (forward, backward, then the trainer's optimizer step: the gradient norm clipped to
    ``grad_clip`` when > 0, AdamW, fp16 through a GradScaler); ``compile``: a torch.compile backend for the forward and
    its backward (the step that measures memory runs eager: saved-tensor hooks do not reach into compiled code)."""
    params = [p for p in model.parameters() if p.requires_grad]
    forward = partial(loss_fn, model)
    if compile:
        forward = torch.compile(forward, backend=compile)
    opt = adamw(params, lr=1e-4)  # the trainer's optimizer (fused where torch has it), the same for every case
    # fp16 gradients underflow unscaled; the scaler's unscale and inf check are part of the trainer's step
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # a constant schedule: the trainer's warm-up and cosine change the rate, not the step's work
    optim = Optimization(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), scaler, params)
    held = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    recompute = mlv.may_recompute(model)   # as the trainer routes: no saved-tensor hooks unless checkpointed

    def step(measure: SavedBytes | None = None, ops: OpCount | None = None):
        ctx = mlv.route(model, route_arg, recompute=recompute) if route_arg is not None else _null()
        with ops or _null(), ctx:  # backward inside the route too: checkpointed layers recompute under it
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if measure is not None:
                    measure.skip |= {t.untyped_storage().data_ptr() for t in [*model.parameters(),
                                                                              *model.buffers()]}
                    hooks = [m.register_forward_pre_hook(measure.hold) for m in held]
                    with torch.autograd.graph.saved_tensors_hooks(measure.pack, lambda t: t):
                        loss = loss_fn(model, *batch)
                    for h in hooks:
                        h.remove()
                else:
                    loss = forward(*batch)
            scaler.scale(loss).backward()
            optimizer_step(optim, grad_clip)   # the trainer's: clip (grad_clip > 0), scaler step and update
            opt.zero_grad(set_to_none=True)

    return step


def kernel_ms(step, device: torch.device) -> float | None:
    """Milliseconds the device spent in kernels during one (timed) step, by torch.profiler: set against the step's
    wall time it says how much of the step the GPU was busy (launch- or host-bound when far below). None on a CPU."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    # the kernels' own events only: each kernel is also counted in the op that launched it, and the optimizer's and
    # a compiled region's spans are annotations (torch's table sums the same: profiler_util._build_table)
    return round(sum(e.self_device_time_total for e in prof.key_averages()
                     if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)) / 1e3, 2)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def make_infer_case(model, batch, amp_dtype, device):
    images, texts = batch

    @torch.no_grad()
    def step(measure=None, ops: OpCount | None = None):
        with ops or _null(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model.encode_image(images)
            model.encode_text(texts)

    return step


def _target(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"{'<= ' + format(target, '.2f'):>9}{' ok' if value <= target else ' MISS'}"


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """Round-by-round ratios a/b (the two cases ran within one round of each other, so a slow spell of the
    machine touches both): their median and quartiles."""
    r = sorted(x / y for x, y in zip(a, b))
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3   # within the data
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clip_cases(args, device, amp) -> tuple[dict, dict]:
    """open_clip: our lora, MTL-LoRA one task / grouped / interleaved, PEFT LoRA, merged vs base inference."""
    base_dtype = amp or torch.float32  # bf16/fp16 runs keep the base weights in that dtype, adapters in fp32
    train_case = partial(make_train_case, compile=args.compile, grad_clip=args.grad_clip)
    probe = build(args.model, device)
    size = probe.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx = probe.context_length
    vocab = int(getattr(probe, "vocab_size", 49408))
    del probe
    g = torch.Generator().manual_seed(0)
    B = args.batch_size
    batch = (torch.randn(B, 3, size, size, generator=g).to(device),
             torch.randint(1, min(49000, vocab), (B, ctx), generator=g).to(device))
    interleaved_ids = [i % len(TASKS) for i in range(B)]
    grouped = Route.from_ids(sorted(interleaved_ids))  # what the loader's segments give
    interleaved = Route.from_ids(interleaved_ids)

    def ours(method: str, n_up: int = 1) -> torch.nn.Module:
        cfg = mlv.MTLLoRAConfig(tasks=TASKS if method == "mtl_lora" else ["all"], r=args.rank, alpha=2 * args.rank,
                                n_up=n_up, method=method, targets=TARGETS)
        return mlv.attach(build(args.model, device, base_dtype), cfg)

    cases: dict[str, object] = {}
    cases["lora"] = train_case(ours("lora"), None, batch, amp, device)
    cases["mtl_lora_single"] = train_case(ours("mtl_lora", args.n_up), "vqa", batch, amp, device)
    cases["mtl_lora_grouped"] = train_case(ours("mtl_lora", args.n_up), grouped, batch, amp, device)
    cases["mtl_lora_interleaved"] = train_case(ours("mtl_lora", args.n_up), interleaved, batch,
                                                    amp, device)
    peft_note = None
    if not args.no_peft:
        try:
            import peft

            pcfg = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                   target_modules=r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$")
            pm = peft.inject_adapter_in_model(pcfg, build(args.model, device, base_dtype))
            for n, p in pm.named_parameters():
                p.requires_grad_("lora_" in n)
                if "lora_" in n:
                    p.data = p.data.float()  # adapters in fp32, as ours (peft's autocast_adapter_dtype)
            cases["peft_lora"] = train_case(pm, None, batch, amp, device)
            peft_note = f"peft {peft.__version__}"
        except ImportError:
            peft_note = "peft not installed"
    base = build(args.model, device, base_dtype).eval()
    merged = ours("mtl_lora", args.n_up).eval()
    with torch.no_grad():
        for bank in merged._mtl_lora.layers.values():
            bank.lora_B.normal_(std=0.02)  # a non-trivial update to merge
    mlv.merge(merged, "retrieval")
    cases["infer_base"] = make_infer_case(base, batch, amp, device)
    cases["infer_merged"] = make_infer_case(merged, batch, amp, device)
    # (name, numerator, denominator, target): step-time ratios the issue asks for; then memory ratios.
    checks = [("mixed grouped / lora", "mtl_lora_grouped", "lora", 1.03),
              ("mixed interleaved / lora", "mtl_lora_interleaved", "lora", 1.05),
              ("one task / lora", "mtl_lora_single", "lora", 1.02),
              ("mixed grouped / peft_lora", "mtl_lora_grouped", "peft_lora", 0.80),
              ("mixed interleaved / peft_lora", "mtl_lora_interleaved", "peft_lora", 0.80),
              ("lora / peft_lora", "lora", "peft_lora", None),
              ("infer merged / base", "infer_merged", "infer_base", None)]
    memory_checks = [(f"saved MB {k} / lora", k, "lora", None if "single" in k else 1.02)
                     for k in ("mtl_lora_grouped", "mtl_lora_interleaved", "mtl_lora_single")]
    return cases, {"checks": checks, "memory_checks": memory_checks,
                   "info": {"model": args.model, "batch_size": B, "base_dtype": str(base_dtype), "peft": peft_note,
                            "compile": args.compile},
                   "title": f"{args.model}, batch {B}+{B}"}


# ---------------------------------------------------------------------------------------------- LLaVA case

LLAVA_TARGETS = {
    "image": [r"vision_tower\.(\w+\.)*encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"],
    "text": [r"language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"],
}
LLAVA_PEFT_TARGETS = (r".*vision_tower\.(\w+\.)*encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
                      r"|.*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
IMAGE_TOKEN = 3


def build_llava(args, device: torch.device, dtype: torch.dtype, checkpointing: bool) -> torch.nn.Module:
    """A random-init LLaVA: ViT-B/32-sized CLIP vision tower (224 px, 49 image tokens) and a Llama LM."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    v = args.vision_width
    vision = CLIPVisionConfig(hidden_size=v, intermediate_size=4 * v, num_hidden_layers=args.vision_layers,
                              num_attention_heads=max(1, v // 64), image_size=224, patch_size=32)
    w = args.lm_width
    text = LlamaConfig(hidden_size=w, intermediate_size=int(w * 2.75) // 64 * 64, num_hidden_layers=args.lm_layers,
                       num_attention_heads=w // 64, num_key_value_heads=w // 64, vocab_size=args.vocab,
                       max_position_embeddings=512)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    cfg._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(cfg).to(device=device, dtype=dtype).train()  # dropout is 0
    if checkpointing:
        hf_grad_checkpointing(model, True)  # non-reentrant, as the trainer's --grad-checkpointing
    return model


def llava_loss(model, pixel_values, input_ids, labels) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens (the last ``labels.shape[1]`` positions)."""
    n = labels.shape[1]
    logits = model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=n + 1, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten())


def llava_cases(args, device, amp) -> tuple[dict, dict]:
    """Mixed MTL-LoRA (grouped and interleaved rows) vs our lora vs PEFT LoRA on one adapter, each also with
    activation checkpointing (mixed: grouped rows, as the loader gives them)."""
    base_dtype = amp or torch.float32  # bf16/fp16 runs keep the base weights in that dtype, adapters in fp32
    train_case = partial(make_train_case, compile=args.compile, grad_clip=args.grad_clip)
    g = torch.Generator().manual_seed(0)
    B, n_img, n_text, n_ans = args.batch_size, (224 // 32) ** 2, args.text_len, 8
    ids = torch.randint(10, args.vocab, (B, n_img + n_text), generator=g)
    ids[:, :n_img] = IMAGE_TOKEN
    batch = (torch.randn(B, 3, 224, 224, generator=g).to(device), ids.to(device), ids[:, -n_ans:].to(device))
    interleaved_ids = [i % len(TASKS) for i in range(B)]
    grouped = Route.from_ids(sorted(interleaved_ids))
    interleaved = Route.from_ids(interleaved_ids)
    one_task = Route.from_ids([0] * B)

    def ours(method: str, ckpt: bool) -> torch.nn.Module:
        cfg = mlv.MTLLoRAConfig(tasks=TASKS if method == "mtl_lora" else ["all"], r=args.rank, alpha=2 * args.rank,
                                n_up=args.n_up if method == "mtl_lora" else 1, method=method, targets=LLAVA_TARGETS)
        return mlv.attach(build_llava(args, device, base_dtype, ckpt), cfg)

    def peft_lora(ckpt: bool) -> torch.nn.Module:
        import peft

        pcfg = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                               target_modules=LLAVA_PEFT_TARGETS)
        pm = peft.inject_adapter_in_model(pcfg, build_llava(args, device, base_dtype, ckpt))
        for n, p in pm.named_parameters():
            p.requires_grad_("lora_" in n)
            if "lora_" in n:
                p.data = p.data.float()  # adapters in fp32, as ours (peft's autocast_adapter_dtype)
        return pm

    try:
        import peft
        peft_note = None if args.no_peft else f"peft {peft.__version__}"
    except ImportError:
        peft_note = "peft not installed"
    cases: dict[str, object] = {}
    for ckpt in (False, True):
        tag = "_ckpt" if ckpt else ""
        cases["lora" + tag] = train_case(ours("lora", ckpt), None, batch, amp, device, llava_loss)
        mixed = ours("mtl_lora", ckpt)
        cases["mtl_lora_grouped" + tag] = train_case(mixed, grouped, batch, amp, device, llava_loss)
        if not ckpt:
            # Controls: the grouped case's own model with every row one task's (what mixing costs, free of
            # which model copy runs), and a second, identical lora model (how far two copies of one
            # computation differ: memory placement moves a CPU step by a few per cent).
            cases["mtl_lora_one_task"] = train_case(mixed, one_task, batch, amp, device, llava_loss)
            cases["lora_copy"] = train_case(ours("lora", ckpt), None, batch, amp, device, llava_loss)
            cases["mtl_lora_interleaved"] = train_case(ours("mtl_lora", ckpt), interleaved,
                                                            batch, amp, device, llava_loss)
        if peft_note and peft_note.startswith("peft "):
            cases["peft_lora" + tag] = train_case(peft_lora(ckpt), None, batch, amp, device, llava_loss)
    checks = [("mixed grouped / lora", "mtl_lora_grouped", "lora", 1.05),
              ("mixed interleaved / lora", "mtl_lora_interleaved", "lora", 1.05),
              ("mixed grouped / peft_lora", "mtl_lora_grouped", "peft_lora", 0.85),
              ("mixed interleaved / peft_lora", "mtl_lora_interleaved", "peft_lora", 0.85),
              ("lora / peft_lora", "lora", "peft_lora", None),
              ("same model: mixed grouped / one task", "mtl_lora_grouped", "mtl_lora_one_task", None),
              ("noise floor: lora copy / lora", "lora_copy", "lora", None),
              ("ckpt: mixed grouped / lora", "mtl_lora_grouped_ckpt", "lora_ckpt", 1.05),
              ("ckpt: mixed grouped / peft_lora", "mtl_lora_grouped_ckpt", "peft_lora_ckpt", 0.85),
              ("ckpt / no ckpt: mixed grouped", "mtl_lora_grouped_ckpt", "mtl_lora_grouped", None)]
    memory_checks = [(f"saved MB {k}_ckpt / {k}", f"{k}_ckpt", k, 1.0)
                     for k in ("lora", "mtl_lora_grouped", "peft_lora")]
    memory_checks.append(("saved MB mtl_lora_grouped / lora", "mtl_lora_grouped", "lora", None))
    model = (f"llava(vit-b/32 {args.vision_width} wide x{args.vision_layers} layers, "
             f"llama {args.lm_layers}x{args.lm_width}, "
             f"vocab {args.vocab})")
    return cases, {"checks": checks, "memory_checks": memory_checks,
                   "info": {"model": model, "batch_size": B, "tokens": n_img + n_text,
                            "base_dtype": str(base_dtype), "peft": peft_note, "compile": args.compile},
                   "title": f"{model}, batch {B} x {n_img + n_text} tokens"}


# ---------------------------------------------------------------------------------------------- running


def model_size_error(args) -> str | None:
    """What is wrong with the model options, or None: heads of 64 (one below 64) that divide the widths, the LM's of
    an even size (rotary embeddings), text ids drawn from 10 up, an open_clip model name that open_clip knows."""
    if args.case == "clip":
        if ":" not in args.model and args.model not in open_clip.list_models():
            return f"--model {args.model!r}: not an open_clip model config; e.g. ViT-B-32 (open_clip.list_models())"
        return None
    lm_heads, vision_heads = args.lm_width // 64, max(1, args.vision_width // 64)
    if lm_heads < 1 or args.lm_width % lm_heads or args.lm_width // lm_heads % 2:
        return (f"--lm-width {args.lm_width}: the language model has width // 64 heads, which must split it into "
                "heads of an even size; give a multiple of 64 (e.g. 64, 1024)")
    if args.vision_width % vision_heads:
        return (f"--vision-width {args.vision_width}: the vision tower has width // 64 heads (1 below 64), which "
                "must divide it; give a multiple of 64 (e.g. 64, 768) or a width below 64")
    if args.vocab < 11:
        return f"--vocab must be at least 11 (text ids are drawn from 10 up), got {args.vocab}"
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = build_parser()
    args = ap.parse_args(argv)   # (counts below 1, --threads, --warmup and --grad-clip refused there)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size is None:
        args.batch_size = 16 if args.case == "clip" else 4
    size_error = model_size_error(args)
    if size_error:   # torch's, transformers' or open_clip's own error otherwise, after building the first models
        ap.error(size_error)
    backends = torch.compiler.list_backends(exclude_tags=()) if args.compile else ()
    if args.compile and args.compile not in backends:   # torch.compile's InvalidBackend otherwise, after a model built
        ap.error(f"--compile {args.compile!r}: not a torch.compile backend; e.g. inductor (what --compile alone "
                 f"takes), aot_eager, eager (all: {', '.join(b for b in backends if 'TESTING' not in b)})")
    if args.json:   # checked now, not after minutes of timing: its place, and that a file can be written there
        try:
            replacing = check_writable_file(args.json, "--json", own_keys=("median_s",))
        except OSError as e:
            ap.error(str(e))
        if replacing:   # a file of another kind was refused above
            print(f"bench_adapters: --json {args.json} holds earlier results; this run replaces them", flush=True)
    try:
        device = pick_device(args.device)
    except RuntimeError as e:   # a bad name, or cuda without a GPU: said now, not from inside model.to()
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    cases, plan = (clip_cases if args.case == "clip" else llava_cases)(args, device, amp)

    memory = {}
    for name, step in cases.items():
        for _ in range(args.warmup):
            step()
        if args.compile:   # the measured step runs eager: one eager step first, as a compiled one forms no M_t
            step(SavedBytes())
        m, ops = SavedBytes(), OpCount()
        if device.type == "cuda":   # every case's model is resident: count what this step adds on top
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        step(m, ops)
        sync(device)
        memory[name] = {"saved_for_backward_mb": round(m.mb, 1), "saved_weights_mb": round(m.weights_mb, 1),
                        "aten_ops_per_step": ops.n}
        if device.type == "cuda":
            memory[name]["cuda_step_peak_mb"] = round((torch.cuda.max_memory_allocated(device) - resident) / 2**20, 1)

    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    rounds = []
    for r in range(args.repeats):  # each round starts one case later, every other one reversed (module docstring)
        k = (r + r % 2) % len(names)   # a reversed round opens with names[k - 1]: names[r % n] here too
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        rounds.append(order)
        for name in order:
            step = cases[name]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps_per_round):
                step()
            sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps_per_round)
            cpu[name].append((time.process_time() - c0) / args.steps_per_round)
    for name, step in cases.items():   # after the timed rounds: a profiler (CUPTI) left attached slows what follows
        if args.profile:
            memory[name]["kernel_ms_per_step"] = kernel_ms(step, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    ratios, ratios_cpu, paired = {}, {}, {}
    for label, a, b, _ in plan["checks"]:
        if a in med and b in med:
            ratios[label] = med[a] / med[b]
            ratios_cpu[label] = med_cpu[a] / med_cpu[b]
            paired[label] = paired_ratio(times[a], times[b])
    mem_key = "cuda_step_peak_mb" if device.type == "cuda" else "saved_for_backward_mb"
    mem_ratios = {label.replace("saved MB", "peak MB") if device.type == "cuda" else label:
                  memory[a][mem_key] / memory[b][mem_key]
                  for label, a, b, _ in plan["memory_checks"] if a in memory and b in memory}
    targets = {label: t for label, _, _, t in plan["checks"] if t is not None}
    targets.update({(label.replace("saved MB", "peak MB") if device.type == "cuda" else label): t
                    for label, _, _, t in plan["memory_checks"] if t is not None})
    result = {
        "case": args.case, **plan["info"], "device": str(device), "precision": args.precision,
        "rank": args.rank, "n_up": args.n_up, "grad_clip": args.grad_clip, "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in med_cpu.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "ratios_cpu_time": {k: round(v, 3) for k, v in ratios_cpu.items()},
        "paired_ratios": {k: {q: round(x, 3) for q, x in v.items()} for k, v in paired.items()},
        "memory": memory,
        "memory_ratios": {k: round(v, 3) for k, v in mem_ratios.items()},
        "targets": targets,
        "times_s": times, "cpu_s": cpu, "rounds": rounds,   # every round's figures and order: the ratios re-derive
    }
    print(f"{plan['title']} on {device} ({args.precision}), r={args.rank}, n_up={args.n_up}, "
          f"grad_clip={args.grad_clip:g}, "
          f"{args.repeats} interleaved rounds, {torch.get_num_threads()} threads"
          + (f", compiled ({args.compile}; memory and operators: eager)" if args.compile else ""))
    kernels = args.profile and device.type == "cuda"
    print(f"{'case':<24}{'median s':>10}{'cpu s':>10}{'saved MB':>10}{'aten ops':>10}"
          + ("{:>10}".format("peak MB") if device.type == "cuda" else "")
          + ("{:>11}".format("kernel ms") if kernels else ""))
    for k, v in med.items():
        line = (f"{k:<24}{v:>10.4f}{med_cpu[k]:>10.4f}{memory[k]['saved_for_backward_mb']:>10.1f}"
                f"{memory[k]['aten_ops_per_step']:>10}")
        if device.type == "cuda":
            line += f"{memory[k]['cuda_step_peak_mb']:>10.1f}"
        if kernels:
            line += f"{memory[k]['kernel_ms_per_step']:>11.2f}"
        print(line)
    print(f"{'ratio':<40}{'wall':>8}{'cpu':>8}{'paired':>8}{'IQR':>14}{'target':>9}")
    for k, v in ratios.items():
        p = paired[k]
        print(f"{k:<40}{v:>8.3f}{ratios_cpu[k]:>8.3f}{p['median']:>8.3f}{p['q1']:>7.3f}-{p['q3']:.3f}"
              f"{_target(p['median'], targets.get(k))}")
    for k, v in mem_ratios.items():
        print(f"{k:<40}{v:>8.3f}{'':>8}{_target(v, targets.get(k))}")
    if args.json:
        with atomic_file(args.json, overwrite=True, what="--json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
