"""eval's default --out, ADAPTER/../eval-<split>, is shared by adapters saved side by side: the second one was told
to pass --overwrite, which deleted the first one's evaluation (review 207)."""
import json

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.cli import eval_main


def test_the_default_out_of_another_adapter_is_refused_even_with_overwrite(tmp_path, capsys):
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2, n_up=1, lambda_type="diagonal"))
    first, second = (mlv.save_adapter(bb.model, tmp_path / name, base={"backbone": "builtin", "pretrained": None})
                     for name in ("a1", "a2"))
    earlier = tmp_path / "eval-test"
    earlier.mkdir()
    (earlier / "eval.json").write_text(json.dumps({"adapter": str(first.absolute()), "tasks": {}}))
    for extra in ([], ["--overwrite"]):
        assert eval_main(["--adapter", str(second), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err
        assert f"holds the evaluation of another adapter, {first.absolute()}" in err and "own --out DIR" in err, err
    assert sorted(p.name for p in earlier.iterdir()) == ["eval.json"]
    # the adapter's own earlier evaluation: replaced with --overwrite, as before
    assert eval_main(["--adapter", str(first), "--device", "cpu"]) == 2
    assert "holds an earlier output of eval; pass --overwrite" in capsys.readouterr().err


def test_the_default_out_of_a_moved_or_copied_adapter_is_its_own(tmp_path, capsys):
    """A run folder moved (or copied) with its eval-test: the adapter it records is this one at its old path."""
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2, n_up=1, lambda_type="diagonal"))
    old = tmp_path / "old" / "adapter"
    adapter = mlv.save_adapter(bb.model, tmp_path / "new" / "adapter", base={"backbone": "builtin", "pretrained": None})
    earlier = tmp_path / "new" / "eval-test"
    earlier.mkdir()
    (earlier / "eval.json").write_text(json.dumps({"adapter": str(old), "tasks": {}}))
    assert eval_main(["--adapter", str(adapter), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier output of eval; pass --overwrite" in err and "another adapter" not in err, err
