#!/usr/bin/env bash
# One GPU session, prepared to run unattended within a few minutes: the CUDA checks (check_gpu.py), the adapter
# benchmark's CLIP and LLaVA cases in bf16 (at the default sizes and at sizes whose arithmetic outweighs the
# launches: bench_*_large), both main jobs, nlvr's pairs beside vqa on both backbones (bf16), an fp16 run (loss
# scaling), a one-rank torchrun (the launch only: with WORLD_SIZE 1 no process group starts, so neither NCCL nor
# DDP runs; they need two GPUs) and a torch.compile run. Every step has its own time limit and the script
# goes on after a failure;
# logs and JSON land in $OUT (default gpu_out/), and each step's exit status and seconds in $OUT/steps.txt.
#
#   OUT=/tmp/gpu bash scripts/check_gpu.sh            # on the machine with the GPU, from the repository root
#   QUICK=1 DEVICE=cpu bash scripts/check_gpu.sh      # the same steps, tiny, on a CPU (a dry run of this script;
#                                                     # CLIP benches on ViT-S-32, time limits x LIMIT_SCALE=4)
#   ONLY=checks,compile bash scripts/check_gpu.sh     # some steps only (names as below)
#   REPEATS=11 bash scripts/check_gpu.sh              # fewer rounds in the two default-size benchmarks
#   BUDGET=0 bash scripts/check_gpu.sh                # no time budget (see below)
#
# A device call ends at 600 s and all the steps take ~12-14 minutes: the steps run within BUDGET seconds of the
# script's start (default 570, none with QUICK=1; lower it by what the same call ran before, e.g. installing the
# wheels). A step's limit is cut to the seconds left, and a step with less than half its limit left is not started:
# steps.txt lists it as skipped and its last line names the ONLY= that runs the skipped steps in the next call (a
# call killed mid-step loses that step's figures and the rest).
# On one H100 (2026-12-05, REPEATS=11) the steps took: checks 23 s, bench_llava 80 s, bench_clip 38 s,
# bench_llava_large 120 s, bench_clip_large 56 s, main_clip 39 s, main_llava 31 s, torchrun 24 s (7 min 5 s with
# the wheels' install), and compile 71 s in a second call (two compilations, 29 s and 24 s); fp16 took 31 s on an
# H200. All of it with the default 15 rounds is ~10 minutes, over one device call: run the compile step (or the
# large steps) in a call of its own, e.g. ONLY=compile,bench_clip_compiled (the CLIP bench with every case's forward
# compiled by inductor: launches and our layers' Python gone; not yet run on a GPU; without PEFT, whose LoRA of
# nn.MultiheadAttention merges weights inside its forward, which inductor refuses). docs/speed.md has the figures.
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
RUNS=$(mktemp -d)
export PYTHONUNBUFFERED=1

if [ "${QUICK:-0}" = 1 ]; then   # a dry run: every step, few steps
    STEPS=(--steps 4 --eval-batch-size 8 --workers 0); BENCH=(--repeats 1 --steps-per-round 1 --warmup 1 --profile)
    # ViT-B-32's CLIP bench took 102 s of its 120 on two CPU cores (ViT-S-32: 22 s), the fp16 step 18 s a step (CPU
    # fp16 kernels): a CPU's limits are the GPU's times LIMIT_SCALE
    LLAVA_BENCH=(--vision-layers 1 --lm-layers 1 --lm-width 64 --vocab 500)
    CLIP_BENCH=(--model ViT-S-32 --batch-size 2)
    CHECKS=(--only llava_mixed_loss_fp32,clip_mixed_route_fp32)
    LLAVA_LARGE=("${LLAVA_BENCH[@]}"); CLIP_LARGE=("${CLIP_BENCH[@]}"); LARGE=("${BENCH[@]}")
    LIMIT_SCALE=${LIMIT_SCALE:-4}
else
    STEPS=(); BENCH=(--repeats "${REPEATS:-15}" --steps-per-round 3 --profile)
    LLAVA_BENCH=(--vocab 32000 --batch-size 16); CLIP_BENCH=(--batch-size 64)
    CHECKS=()
    # Larger sizes: a step's arithmetic ~40 TFLOP (LLaVA: outweighs launching its operators on an H100) and ~34
    # TFLOP (CLIP ViT-L-14: still mostly host time there).
    LLAVA_LARGE=(--vocab 32000 --batch-size 16 --lm-width 4096 --lm-layers 4 --text-len 448)
    CLIP_LARGE=(--model ViT-L-14 --batch-size 64); LARGE=(--repeats 7 --steps-per-round 2 --profile)
fi

BUDGET=${BUDGET:-$([ "${QUICK:-0}" = 1 ] && echo 0 || echo 570)}
SKIPPED=()
step() {   # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$(($2 * ${LIMIT_SCALE:-1})); shift 2
    if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
    if [ "$BUDGET" -gt 0 ]; then
        local left=$((BUDGET - SECONDS))
        if [ $((2 * left)) -lt "$limit" ]; then
            echo "$name skipped: ${left} s of BUDGET=$BUDGET left, limit $limit s" | tee -a "$OUT/steps.txt"
            SKIPPED+=("$name"); return
        fi
        if [ "$left" -lt "$limit" ]; then limit=$left; fi
    fi
    local t0=$SECONDS
    echo "=== $name: $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep --line-buffered -v -E "(it|step)/s\]$|s/(it|step)\]$"   # (tqdm progress lines)
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi -L; "$PY" -c "import torch, transformers, open_clip, peft; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__, 'peft',
peft.__version__)"; } 2>&1 | tee "$OUT/env.txt"

step checks 150 "$PY" scripts/check_gpu.py --device "$DEVICE" --json "$OUT/gpu_checks.json" "${CHECKS[@]}"
step bench_llava 200 "$PY" scripts/bench_adapters.py --case llava --device "$DEVICE" --precision bf16 \
    "${LLAVA_BENCH[@]}" "${BENCH[@]}" --json "$OUT/bench_llava.json"
step bench_clip 120 "$PY" scripts/bench_adapters.py --case clip --device "$DEVICE" --precision bf16 \
    "${CLIP_BENCH[@]}" "${BENCH[@]}" --json "$OUT/bench_clip.json"
step bench_llava_large 150 "$PY" scripts/bench_adapters.py --case llava --device "$DEVICE" --precision bf16 \
    "${LLAVA_LARGE[@]}" "${LARGE[@]}" --json "$OUT/bench_llava_large.json"
step bench_clip_large 120 "$PY" scripts/bench_adapters.py --case clip --device "$DEVICE" --precision bf16 \
    "${CLIP_LARGE[@]}" "${LARGE[@]}" --json "$OUT/bench_clip_large.json"
step main_clip 150 "$PY" scripts/train_vl.py --tasks vqa,retrieval --device "$DEVICE" --out "$RUNS/clip" "${STEPS[@]}"
step main_llava 180 "$PY" scripts/train_vl.py --backbone builtin-llava --tasks vqa,captioning --device "$DEVICE" \
    --out "$RUNS/llava" "${STEPS[@]}"
# rows of two images (nlvr) beside one-image rows, bf16: the routed image tower (contrastive) and pair prompts
step pairs_clip 120 "$PY" scripts/train_vl.py --tasks nlvr,vqa --device "$DEVICE" --precision bf16 --steps 100 \
    --out "$RUNS/pairs_clip" "${STEPS[@]}"
step pairs_llava 150 "$PY" scripts/train_vl.py --backbone builtin-llava --tasks nlvr,vqa --device "$DEVICE" \
    --precision bf16 --steps 100 --out "$RUNS/pairs_llava" "${STEPS[@]}"
for r in clip llava pairs_clip pairs_llava; do cp "$RUNS/$r/report.md" "$OUT/report_$r.md" 2>/dev/null; done
step fp16 90 "$PY" scripts/train_vl.py --tasks vqa,retrieval --device "$DEVICE" --precision fp16 --steps 60 \
    --skip-zero-shot --out "$RUNS/fp16" "${STEPS[@]}"
step torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 scripts/train_vl.py \
    --tasks vqa,retrieval --device "$DEVICE" --steps 60 --skip-zero-shot --out "$RUNS/ddp" "${STEPS[@]}"
step bench_clip_compiled 300 "$PY" scripts/bench_adapters.py --case clip --device "$DEVICE" --precision bf16 \
    --compile --no-peft "${CLIP_BENCH[@]}" "${LARGE[@]}" --json "$OUT/bench_clip_compiled.json"
step compile 240 "$PY" scripts/train_vl.py --tasks vqa,retrieval --device "$DEVICE" --compile --steps 100 \
    --skip-zero-shot --out "$RUNS/compile" "${STEPS[@]}"
rm -rf "$RUNS"
if [ ${#SKIPPED[@]} -gt 0 ]; then
    (IFS=,; echo "skipped for the time budget; next call: ONLY=${SKIPPED[*]} bash scripts/check_gpu.sh") \
        >> "$OUT/steps.txt"
fi
cat "$OUT/steps.txt"
