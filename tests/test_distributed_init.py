"""``init_distributed`` under torchrun, without a GPU or a second process: the backend and device each rank's
process group gets (NCCL bound to the rank's own GPU, gloo on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mtl_lora_vl.distributed import init_distributed


@pytest.fixture
def two_ranks(monkeypatch):
    """Rank 1 of 2 on a machine with 2 GPUs (faked); the process group calls are recorded, not made."""
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    calls: dict = {"set_device": [], "init": []}
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(torch.device(d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls["init"].append(kw))
    return calls


def test_nccl_is_bound_to_the_ranks_gpu(two_ranks):
    """Without ``device_id`` NCCL's barrier took "the device under current context" and rank 0 warned so at the
    first barrier of every GPU run (torch's "You can specify `device_id` in `init_process_group`")."""
    info = init_distributed("auto")
    assert info.device == torch.device("cuda", 1) and (info.rank, info.world_size) == (1, 2)
    assert two_ranks["set_device"] == [torch.device("cuda", 1)]
    assert two_ranks["init"] == [{"backend": "nccl", "device_id": torch.device("cuda", 1)}]


def test_a_cpu_run_under_torchrun_uses_gloo_unbound(two_ranks):
    info = init_distributed("cpu")
    assert info.device == torch.device("cpu") and two_ranks["set_device"] == []
    assert two_ranks["init"] == [{"backend": "gloo"}]
