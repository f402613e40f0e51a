"""Review 210: an adapter of a model whose class was defined in the script that trained it (``__main__.Net``) loads
onto that class imported from the script's module elsewhere (``train.Net``), its projections and weights checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.io.layout import AdapterFileError

CFG = mlv.MTLLoRAConfig(tasks=["t1", "t2"], r=2, targets={"image": [r"^fc$"]})


def _net(module: str, width: int = 4, seed: int = 0) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    Net.__module__, Net.__qualname__ = module, "Net"
    torch.manual_seed(seed)
    return Net()


@pytest.mark.parametrize(("saved", "loaded"), [("__main__", "train"), ("train", "__main__")])
def test_a_class_of_the_script_loads_where_it_is_imported(tmp_path, saved, loaded):
    """It was refused as "made for class __main__.Net, but this base model is train.Net; load it onto the base
    model it was trained on" (which it was), with no switch to get past it."""
    model = _net(saved)
    mlv.attach(model, CFG)
    path = mlv.save_adapter(model, tmp_path / "a")
    mlv.load_adapter(_net(loaded), path)
    with pytest.raises(AdapterFileError, match=r"made for class .*Net, but this base model is other\.Other"):
        other = _net("other")
        type(other).__qualname__ = "Other"
        mlv.load_adapter(other, path)
    with pytest.raises(AdapterFileError, match="other weights of this architecture"):
        mlv.load_adapter(_net(loaded, seed=1), path)
    with pytest.raises(AdapterFileError, match="fingerprint mismatch"):
        mlv.load_adapter(_net(loaded, width=6), path)
