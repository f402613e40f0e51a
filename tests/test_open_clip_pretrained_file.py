"""Helper 477: ``open_clip:NAME --pretrained FILE`` of a file torch.load's weights-only unpickler refuses (empty,
truncated, not a checkpoint, or a training checkpoint pickling other objects) raised torch's own error: an empty
EOFError, or an UnpicklingError whose advice is to load it with weights_only=False (running the file's code). It is
now a ValueError naming the file and the model, what it may be, and the fix."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from open_clip import factory

from mtl_lora_vl.backbones import load_backbone

_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize(("content", "why"), [
    (b"", "EOFError: it ends early"),
    (b"not a checkpoint", "UnpicklingError: Unsupported operand"),
    ("namespace", "UnpicklingError: Unsupported global: GLOBAL argparse.Namespace"),
])
def test_a_checkpoint_the_weights_only_unpickler_refuses_is_named_with_the_fix(tmp_path, monkeypatch, content, why):
    monkeypatch.setitem(factory._MODEL_CONFIGS, "tiny-pretrained-test", _CFG)
    path = tmp_path / "model.bin"
    if content == "namespace":   # a training checkpoint: its arguments pickled beside the weights
        torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^the pretrained weights file {re.escape(str(path))} given for "
                                         rf"open_clip:tiny-pretrained-test is not a "
                                         rf"weights-only PyTorch checkpoint \({why}.*\): it is empty, truncated or "
                                         r"not a checkpoint, or it pickles objects besides tensors .*Re-download it") \
            as e:
        load_backbone("open_clip:tiny-pretrained-test", pretrained=str(path))
    assert "weights_only` set to `False`" not in str(e.value)


def test_weights_that_are_no_file_are_named_as_given_from_python_or_the_command_line(tmp_path, monkeypatch):
    """The weights file given from Python (load_backbone(..., pretrained=...)) was named as the flag "--pretrained"
    in the refusals of a file the unpickler refuses (above) and of one that is not there, and the fix said only
    "--pretrained /path/...": both now name the file as the pretrained weights and say both ways of giving them."""
    monkeypatch.setitem(factory._MODEL_CONFIGS, "tiny-pretrained-test", _CFG)
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError, match=rf"^pretrained '{re.escape(str(missing))}' \(the weights given for "
                                                r"open_clip:tiny-pretrained-test\) is not a local file, nor a "
                                                r"pretrained tag .*give its path as pretrained \(--pretrained FILE, "
                                                r"or load_backbone\('open_clip:tiny-pretrained-test', "
                                                r"pretrained=FILE\)\)$"):
        load_backbone("open_clip:tiny-pretrained-test", pretrained=str(missing))
