"""One task's export was written into the adapter's own folder (several tasks' were refused there): the adapter then
held a base model's worth of foreign files, which its own save_adapter --overwrite deletes (review 207)."""
import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.cli import export_main


def test_an_export_inside_the_adapter_directory_is_refused(tmp_path, capsys):
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2, n_up=1, lambda_type="diagonal"))
    adapter = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": "builtin", "pretrained": None})
    before = sorted(p.relative_to(adapter) for p in adapter.rglob("*"))
    for out in (adapter / "vqa.safetensors", adapter / "tasks" / "merged"):
        assert export_main(["--adapter", str(adapter), "--task", "vqa", "--out", str(out)]) == 2
        assert f"lies inside the adapter directory {adapter.absolute()}" in capsys.readouterr().err
    assert sorted(p.relative_to(adapter) for p in adapter.rglob("*")) == before
    assert export_main(["--adapter", str(adapter), "--task", "vqa", "--out", str(tmp_path / "vqa.safetensors")]) == 0
