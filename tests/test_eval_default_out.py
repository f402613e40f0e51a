"""eval's default --out, ADAPTER/../eval-<split>, is shared by adapters saved side by side: the second one was told
to pass --overwrite, which deleted the first one's evaluation (review 207)."""
import json

import pytest
from test_eval_zero_shot import _small_spec  # (the same small built-in specs)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.io.layout import ADAPTER_CONFIG, check_output, check_outputs_folder


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


def test_an_out_inside_the_adapter_directory_is_refused(tmp_path, capsys):
    """Review h429: eval --out ADAPTER/eval wrote eval.json, report.md and plots/ into the adapter's folder, which the
    adapter saved again (save_adapter(overwrite=True), a --keep-best run's next best) replaces whole, deleting the
    results unsaid (export refused the same --out since review 207). Now eval refuses it too, before scoring."""
    run = tmp_path / "run"
    assert train_main(["--tasks", _small_spec(tmp_path, "vqa", 16, 8), "--steps", "1", "--batch-size", "8",
                       "--workers", "0", "--no-eval-val", "--skip-zero-shot", "--out", str(run), "-q"]) == 0
    adapter = run / "adapter"
    before = sorted(p.relative_to(adapter) for p in adapter.rglob("*"))
    for extra in ([], ["--overwrite"]):
        assert eval_main(["--adapter", str(adapter), "--device", "cpu", "--out",
                          str(adapter / "eval"), *extra]) == 2
        err = capsys.readouterr().err
        assert f"lies inside the adapter directory {adapter.absolute()}, which eval does not write into" in err, err
    assert sorted(p.relative_to(adapter) for p in adapter.rglob("*")) == before


def test_an_out_beside_the_adapter_spelt_through_it_is_not_refused(tmp_path):
    """Review h436: the adapter-directory check walked --out's parents as spelt, so --out ADAPTER/../eval (RUN/eval,
    beside the adapter: the very fix its message gives) and LINK/../eval (LINK a symbolic link to the adapter) were
    refused as lying inside the adapter. They are judged by where they lead; LINK/eval, inside it, is still refused,
    and so is a folder of outputs (export's several tasks) inside it."""
    adapter = tmp_path / "saved" / "best"   # (not a run's adapter/: export's folder may not lie inside a run either)
    adapter.mkdir(parents=True)
    (adapter / ADAPTER_CONFIG).write_text("{}")
    (tmp_path / "link").symlink_to(adapter)
    for out in (adapter / ".." / "eval", tmp_path / "link" / ".." / "eval"):
        check_output(out, marker="eval.json", command="eval", overwrite=False)
        check_outputs_folder(out, command="export")
    for out in (adapter / "eval", tmp_path / "link" / "eval"):
        with pytest.raises(FileExistsError, match=f"lies inside .*{adapter}"):
            check_output(out, marker="eval.json", command="eval", overwrite=False)
        with pytest.raises(FileExistsError, match=f"lies inside {adapter}"):
            check_outputs_folder(out, command="export")
