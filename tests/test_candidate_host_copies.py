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


def _scores_on_fake_cuda(monkeypatch, **kw) -> tuple[torch.Tensor, _OurBlockingCopies]:
    """The built-in LLaVA's ``sequence_scores`` of 3 candidates for 2 rows (``kw`` passed on) on the fake CUDA
    device, and the package's blocking host-to-device copies made as it scored."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")   # (transformers' own image-token count check)
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made ids keep their values)
    bb = load_backbone("builtin-llava", device="cpu")
    bb.model.eval()
    prompts = [f"{bb.image_token} what colour is it?"] * 2
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        _fake_onto_cuda(bb.model)
        images = torch.zeros(2, 3, bb.image_size, bb.image_size, device=CUDA, dtype=torch.bfloat16)
        with _OurBlockingCopies() as copies:
            scores = bb.sequence_scores(images, prompts, ["red", "dark blue", "green"], **kw)
    return scores, copies


def test_candidate_ids_go_over_without_waiting_for_the_device(monkeypatch):
    scores, copies = _scores_on_fake_cuda(monkeypatch)
    assert copies.seen == []
    assert scores.shape == (2, 3) and scores.device.type == "cuda"


def test_per_token_scores_go_over_without_waiting_for_the_device(monkeypatch):
    """``per_token=True`` (classification's ``score = "mean"``) divided the sums by the candidates' token counts sent
    over as ``torch.tensor(counts, device=cuda)``: a third blocking copy per call, after the scoring was queued. The
    counts are now those of the labels already on the device."""
    scores, copies = _scores_on_fake_cuda(monkeypatch, per_token=True)
    assert copies.seen == []
    assert scores.shape == (2, 3) and scores.device.type == "cuda"


@pytest.mark.parametrize("path", ["cached", "full"])
def test_per_token_scores_are_the_sums_over_each_candidate_s_tokens(path):
    """Per-token scores are each candidate's summed score over its token count (its end token included), on the
    cached path and on the full sequences that training under checkpointing scores."""
    bb = load_backbone("builtin-llava", device="cpu")
    bb.model.eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    prompts = [f"{bb.image_token} what colour is it?", f"{bb.image_token} what shape is it?"]
    candidates = ["red", "dark blue circle", "green"]
    collate = bb.lm_collator()
    lengths = [[len(ids) + 1 for ids in collate.continuation_ids([t] * 3, candidates)]   # (+1: the end token)
               for t in collate.prompt_texts(prompts)]
    assert lengths[0] == lengths[1] and len(set(lengths[0])) > 1
    with torch.no_grad():
        if path == "cached":
            sums, mean = (bb.sequence_scores(images, prompts, candidates, per_token=p) for p in (False, True))
        else:
            end = collate.end_id("")
            cands = [[[*ids, end] for ids in collate.continuation_ids([t] * 3, candidates)]
                     for t in collate.prompt_texts(prompts)]
            sums, mean = (bb._scores_full(images, prompts, cands, per_token=p) for p in (False, True))
    torch.testing.assert_close(mean, sums / torch.tensor(lengths, dtype=sums.dtype), rtol=0, atol=0)
