"""Which Hugging Face hub cache a model loaded by hub id came from (``save_merged`` takes its processor and tokenizer
files from that cache's snapshot), found from what can be known: the folder ``huggingface_hub`` reads, the
environment, the model's own weights."""

from __future__ import annotations

from pathlib import Path

from mtl_lora_vl.backbones.cache import hf_hub_cache


def test_the_hub_cache_from_the_environment_expands_variables_as_huggingface_hub_does(tmp_path, monkeypatch):
    """HF_HOME='$SCRATCH/hf' (an env file no shell expanded): huggingface_hub expands it, this package looked in a
    folder literally named '$SCRATCH' under the working directory."""
    monkeypatch.setenv("SCRATCH", str(tmp_path))
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", "$SCRATCH/hf")
    assert hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", "${SCRATCH}/hub")
    assert hf_hub_cache() == tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub")
    assert hf_hub_cache() == Path("~/hub").expanduser()
