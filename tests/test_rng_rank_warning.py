"""The CUDA generator warning of a resume under torchrun: each rank says it with its rank."""

from __future__ import annotations

import pytest
import torch

from mtl_lora_vl.training.rng import rng_state, set_rng_state


def test_a_rank_restoring_cuda_states_of_another_device_count_names_itself(monkeypatch):
    """Resuming under torchrun, every rank restores its own generator states and warns of its machine's device
    count: N lines that said neither which rank nor (over several machines) which machine."""
    state = {**rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)] * 2}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: None)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match=r"^rank 1: the checkpoint holds CUDA generator states of 2 devices"):
        set_rng_state(state)
