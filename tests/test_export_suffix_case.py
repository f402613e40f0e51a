"""A merged export named FILE.SAFETENSORS (another case) is refused: only ".safetensors" names a file, so it was
written as a folder of that name, which open_clip.create_model(NAME, pretrained=FILE) cannot read (review 207)."""
import pytest

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.cli import export_main


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2, n_up=1, lambda_type="diagonal"))
    path = mlv.save_adapter(bb.model, tmp_path_factory.mktemp("ad") / "adapter",
                            base={"backbone": "builtin", "pretrained": None})
    return path, bb.model


def test_the_export_command_refuses_an_upper_case_suffix(adapter, tmp_path, capsys):
    out = tmp_path / "vqa.SAFETENSORS"
    assert export_main(["--adapter", str(adapter[0]), "--task", "vqa", "--out", str(out)]) == 2
    assert f"give {tmp_path / 'vqa.safetensors'} for one file, or a folder name" in capsys.readouterr().err
    assert not out.exists()


def test_save_merged_refuses_it_too(adapter, tmp_path):
    with pytest.raises(ValueError, match="lower case"):
        mlv.save_merged(adapter[1], "vqa", tmp_path / "vqa.Safetensors")
    assert not (tmp_path / "vqa.Safetensors").exists()
    assert mlv.save_merged(adapter[1], "vqa", tmp_path / "vqa.safetensors").is_file()
