"""save_adapter records ``base`` as the caller wrote it where this package cannot resolve it (a spec it does not
parse, an ``hf:`` folder not here), and refuses nothing for it: the base is rebuilt at load time, where
``load_pretrained(..., backbone=...)`` points elsewhere. An ``open_clip:DIR`` whose folder is not here escaped that
rule: save_adapter raised parse_spec's FileNotFoundError ("open_clip:./missing: the directory missing does not
exist"), which named neither save_adapter nor ``base``, and nothing was saved."""

from __future__ import annotations

import pytest

import mtl_lora_vl as mlv
from mtl_lora_vl.io.layout import AdapterFileError


@pytest.fixture(scope="module")
def adapted():
    bb = mlv.backbones.load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2))
    return bb.model


@pytest.mark.parametrize("spec", ["open_clip:./missing_dir", "hf:./missing_dir"])
def test_a_base_folder_not_here_is_recorded_as_written(adapted, spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = mlv.save_adapter(adapted, tmp_path / "adapter", base={"backbone": spec})
    assert mlv.read_adapter_config(out)["base"] == {"backbone": spec}
    with pytest.raises(AdapterFileError, match=r"cannot build the base model .*missing_dir.*pass backbone="):
        mlv.load_pretrained(out, heads=False)
    assert mlv.load_pretrained(out, backbone="builtin", heads=False).config.tasks == ["vqa"]
