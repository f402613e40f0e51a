"""transformers' progress bars under ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (helper 521): the user asked for bars
everywhere, which huggingface_hub's switch refuses to turn off."""

from __future__ import annotations

import importlib
import warnings

import pytest
from transformers.utils import logging as hf_logging

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones.hf import transformers_bars
from mtl_lora_vl.backbones.loading import load_backbone
from mtl_lora_vl.cli.export import export_main


@pytest.fixture
def bars_asked_for(monkeypatch):
    """``HF_HUB_DISABLE_PROGRESS_BARS=0`` as huggingface_hub read it at import."""
    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hub, "HF_HUB_DISABLE_PROGRESS_BARS", False)
    return hub


def _bar_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if "progress bars" in str(w.message)]


def test_the_switch_leaves_bars_on_that_the_hub_variable_asks_for(bars_asked_for):
    """Off a terminal the switch turned transformers' bars off, and huggingface_hub warned "Cannot disable progress
    bars: environment variable HF_HUB_DISABLE_PROGRESS_BARS=0 is set and has priority" on every load and export."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with transformers_bars(False):
            inside = hf_logging.is_progress_bar_enabled()
    assert _bar_warnings(seen) == []
    assert inside and hf_logging.is_progress_bar_enabled()


def test_a_merged_export_under_the_hub_variable_draws_the_bar_without_a_warning(tmp_path, capfd, bars_asked_for):
    """export --format merged off a terminal, the user's HF_HUB_DISABLE_PROGRESS_BARS=0 set: the bar asked for is
    drawn, and no warning about a switch the user never touched."""
    bb = load_backbone("builtin-llava")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    ad = mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin-llava"})
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "o")]) == 0
    assert _bar_warnings(seen) == []
    assert "Writing model shards" in capfd.readouterr().err
