"""Helper 345: a head tensor's dtype is checked as the adapter tensors' are. ``heads.safetensors`` holding a head's
float weight as int64 (and its bias as bool) loaded without a word -- ``copy_`` cast them, weight [289., 182., ...] --
where an int adapter tensor is refused; the file's digest is the config's, so an edited pair passed the sha256 check."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_open_clip
from safetensors.torch import load_file, save_file

import mtl_lora_vl as mlv
from mtl_lora_vl.io.adapter_files import ADAPTER_CONFIG, HEADS_WEIGHTS, AdapterFileError
from mtl_lora_vl.io.tensor_files import sha256_file


def _saved(tmp_path):
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    head = torch.nn.Linear(4, 3)
    head.register_buffer("steps", torch.tensor([7]))   # an integer buffer: loads from an integer tensor
    return mlv.save_adapter(model, tmp_path / "ad", heads={"a": head})


def _rewrite_heads(path, change):
    tensors = {k: change(k, v) for k, v in load_file(str(path / HEADS_WEIGHTS)).items()}
    save_file(tensors, str(path / HEADS_WEIGHTS), metadata={"format": "mtl-lora-vl-adapter"})
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["files"][HEADS_WEIGHTS] = sha256_file(path / HEADS_WEIGHTS)
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))


def _head():
    head = torch.nn.Linear(4, 3)
    head.register_buffer("steps", torch.tensor([0]))
    return head


def test_a_float_head_weight_stored_as_integers_is_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite_heads(path, lambda k, v: (v * 1000).long() if k == "a.weight" else v)
    torch.manual_seed(0)
    with pytest.raises(AdapterFileError, match=r"dtype mismatch in the head of task 'a': a.weight is I64 in the file "
                                               r"but torch.float32 in the head module"):
        mlv.load_adapter(tiny_open_clip(), path, heads={"a": _head()})


def test_an_integer_buffer_stored_as_floats_is_refused_and_other_float_dtypes_load(tmp_path):
    path = _saved(tmp_path)
    _rewrite_heads(path, lambda k, v: v.half() if k == "a.weight" else v)   # fp16 of a float weight: loads
    head = _head()
    torch.manual_seed(0)
    mlv.load_adapter(tiny_open_clip(), path, heads={"a": head})
    assert head.steps.tolist() == [7] and head.weight.dtype == torch.float32
    _rewrite_heads(path, lambda k, v: v.float() if k == "a.steps" else v)
    torch.manual_seed(0)
    with pytest.raises(AdapterFileError, match=r"a.steps is F32 in the file but torch.int64 in the head module"):
        mlv.load_adapter(tiny_open_clip(), path, heads={"a": _head()})


def test_an_integer_buffer_loads_into_a_narrower_dtype_only_when_its_values_survive(tmp_path):
    """An int64 buffer into an int32 or bool buffer of the head module: copy_ cast it silently (2**40 became 0 in
    int32, 7 became True in bool); an exact cast (7 into int32, 1 into bool) still loads."""
    path = _saved(tmp_path)   # a.steps is int64 [7] in the file

    def base():
        torch.manual_seed(0)
        return tiny_open_clip()

    def head(dtype):
        h = torch.nn.Linear(4, 3)
        h.register_buffer("steps", torch.tensor([0], dtype=dtype))
        return h

    narrow = head(torch.int32)
    mlv.load_adapter(base(), path, heads={"a": narrow})
    assert narrow.steps.tolist() == [7] and narrow.steps.dtype == torch.int32
    with pytest.raises(AdapterFileError, match=r"a.steps is torch.int64 in the file, and torch.bool in the head module "
                                               r"does not hold its value 7"):
        mlv.load_adapter(base(), path, heads={"a": head(torch.bool)})
    _rewrite_heads(path, lambda k, v: torch.tensor([2**40]) if k == "a.steps" else v)
    with pytest.raises(AdapterFileError, match=r"torch.int32 in the head module does not hold its value 1099511627776"):
        mlv.load_adapter(base(), path, heads={"a": head(torch.int32)})
    _rewrite_heads(path, lambda k, v: torch.tensor([1]) if k == "a.steps" else v)
    flag = head(torch.bool)
    mlv.load_adapter(base(), path, heads={"a": flag})
    assert flag.steps.tolist() == [True]


def test_an_integer_buffer_whose_cast_wraps_back_is_refused(tmp_path):
    """uint8 200 into an int8 buffer is -56, and -56 cast back to uint8 is 200 again: a round trip through the
    head's dtype passed it (as int64 -1 into uint64). The values are compared as numbers; uint8 100 still loads."""
    path = _saved(tmp_path)

    def base():
        torch.manual_seed(0)
        return tiny_open_clip()

    _rewrite_heads(path, lambda k, v: torch.tensor([100, 200], dtype=torch.uint8) if k == "a.steps" else v)
    with pytest.raises(AdapterFileError, match=r"a.steps is torch.uint8 in the file, and torch.int8 in the head module "
                                               r"does not hold its value 200"):
        mlv.load_adapter(base(), path, heads={"a": _narrow(torch.int8, 2)})
    _rewrite_heads(path, lambda k, v: torch.tensor([-1, 3]) if k == "a.steps" else v)
    with pytest.raises(AdapterFileError, match=r"torch.uint64 in the head module does not hold its value -1"):
        mlv.load_adapter(base(), path, heads={"a": _narrow(torch.uint64, 2)})
    _rewrite_heads(path, lambda k, v: torch.tensor([100, 3], dtype=torch.uint8) if k == "a.steps" else v)
    fits = _narrow(torch.int8, 2)
    mlv.load_adapter(base(), path, heads={"a": fits})
    assert fits.steps.tolist() == [100, 3]


def _narrow(dtype, n):
    h = torch.nn.Linear(4, 3)
    h.register_buffer("steps", torch.zeros(n, dtype=dtype))
    return h
