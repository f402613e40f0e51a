"""What ``export`` says besides what it wrote: no third-party progress bar off a terminal (helper 513)."""

from __future__ import annotations

import importlib

import pytest
from transformers.utils import logging as hf_logging

import mtl_lora_vl as mlv
import mtl_lora_vl.io.exports as exports
from mtl_lora_vl.backbones.loading import load_backbone
from mtl_lora_vl.cli.export import export_main


def _llava_adapter(tmp_path):
    bb = load_backbone("builtin-llava")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    return mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin-llava"})


@pytest.fixture
def hub_group_setting():
    """A user's own huggingface_hub setting for one group of bars, which must outlive the export."""
    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    hub.disable_progress_bars("some_library")
    yield hub
    hub.progress_bar_states.pop("some_library", None)


def test_a_merged_export_shows_no_writing_model_shards_bar_off_a_terminal(tmp_path, capfd, hub_group_setting):
    """transformers 5's save_pretrained drew "Writing model shards: 100%|...| 1/1" on export --format merged's stderr
    (into log files too, and at -q), where the package shows its bars (and transformers' "Loading weights") only on
    a terminal. transformers' switch is put back as it was, the hub's per-group settings too."""
    ad = _llava_adapter(tmp_path)
    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "o")]) == 0
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()   # (put back: nothing process-wide left behind)
    assert hub_group_setting.progress_bar_states.get("some_library") is False


def test_a_merged_export_keeps_the_bar_on_a_terminal(tmp_path, capfd, monkeypatch):
    """On a terminal transformers' bar stays, as the package's own bars and its "Loading weights" do."""
    ad = _llava_adapter(tmp_path)
    monkeypatch.setattr(exports, "interactive", lambda: True)
    capfd.readouterr()
    assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "o")]) == 0
    assert "Writing model shards" in capfd.readouterr().err
