"""scripts/bench_adapters.py runs end to end on a tiny random LLaVA (the CLIP case needs ViT-B-32, too big for
a test) and reports what the issues' goals read: step medians, ratios, activation memory and operator counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_adapters", REPO / "scripts" / "bench_adapters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_llava_case_reports_ratios_memory_and_ops(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "bench.json"
    result = _bench().main(["--case", "llava", "--vision-layers", "1", "--lm-layers", "1", "--lm-width", "128",
                            "--vocab", "300", "--text-len", "8", "--batch-size", "4", "--repeats", "2",
                            "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    cases = {"lora", "mtl_lora_grouped", "mtl_lora_interleaved", "peft_lora", "lora_ckpt",
             "mtl_lora_grouped_ckpt", "peft_lora_ckpt"}
    assert set(result["median_s"]) == cases and all(v > 0 for v in result["median_s"].values())
    ops = {k: v["aten_ops_per_step"] for k, v in result["memory"].items()}
    assert ops["lora"] < ops["mtl_lora_grouped"]
    assert abs(ops["mtl_lora_interleaved"] - ops["mtl_lora_grouped"]) <= 1  # any row order: the same operators
    assert result["memory_ratios"]["saved MB lora_ckpt / lora"] < 0.5             # checkpointing keeps less
    assert "mixed grouped / lora" in result["ratios"] and result["targets"]["mixed grouped / lora"] == 1.05
