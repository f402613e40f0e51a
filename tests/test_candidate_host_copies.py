"""Candidate scoring (``sequence_scores``, the generative path's classification / nlvr evaluation) on a fake CUDA
device (the harness of ``test_fake_cuda.py``): the candidates' ids are the host's, so they go over to the device in
one copy that does not wait for its queued work. They went as ``torch.tensor(first_ids, device=cuda)`` and
``labels.to(cuda)``: two copies with a stream synchronise per call, each waiting for the prompts' prefill."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from test_fake_cuda import _PACKAGE, CUDA, _BlockingCopies, _fake_cuda_works, _fake_onto_cuda
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.builtin import builtin_llava_dir

pytestmark = [pytest.mark.skipif(not _fake_cuda_works(),
                                 reason="this torch cannot fake device='cuda' tensors under FakeTensorMode"),
              pytest.mark.skipif(not (builtin_llava_dir() / "config.json").is_file(),
                                 reason="built-in LLaVA not built (python scripts/pretrain_llava.py)"),
              pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")]


class _OurBlockingCopies(_BlockingCopies):
    """The blocking host-to-device copies the package's own code makes (transformers' cache makes some of its own:
    not ours to change), each as ``what file:line``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        before = len(self.seen)
        out = super().__torch_function__(func, types, args, kwargs)
        if len(self.seen) > before:
            frame = sys._getframe(1)
            while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
                self.seen[-1] += f" {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
            else:
                self.seen.pop()
        return out


def test_candidate_ids_go_over_without_waiting_for_the_device(monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")   # (transformers' own image-token count check)
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made ids keep their values)
    bb = load_backbone("builtin-llava", device="cpu")
    bb.model.eval()
    prompts = [f"{bb.image_token} what colour is it?"] * 2
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        _fake_onto_cuda(bb.model)
        images = torch.zeros(2, 3, bb.image_size, bb.image_size, device=CUDA, dtype=torch.bfloat16)
        with _OurBlockingCopies() as copies:
            scores = bb.sequence_scores(images, prompts, ["red", "dark blue", "green"])
    assert copies.seen == []
    assert scores.shape == (2, 3) and scores.device.type == "cuda"
