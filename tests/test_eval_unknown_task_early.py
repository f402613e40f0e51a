"""``eval --adapter A --tasks NAME`` with a NAME that is neither a task of the adapter nor a spec file is refused
before the base model loads (the adapter's config names its tasks); it was refused only once the base model had
loaded, minutes for a 7B LLaVA (review 225)."""
import mtl_lora_vl as mlv
import mtl_lora_vl.evaluation.evaluate as evaluate
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.cli import eval_main


def test_an_unknown_task_is_refused_before_the_base_model_loads(tmp_path, capsys, monkeypatch):
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2, n_up=1, lambda_type="diagonal"))
    adapter = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": "builtin", "pretrained": None})

    def no_load(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(evaluate, "load_pretrained", no_load)
    assert eval_main(["--adapter", str(adapter), "--tasks", "vqa,retreival", "--device", "cpu",
                      "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "--tasks: 'retreival' is not a task of the adapter" in err and "['vqa', 'retrieval']" in err, err
    assert not (tmp_path / "ev").exists()
    assert eval_main(["--adapter", str(adapter), "--tasks", "vqa retrieval", "--out", str(tmp_path / "ev")]) == 2
    assert "(task names are separated by commas: --tasks vqa,retrieval)" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_an_unknown_task_gets_train_s_did_you_mean(tmp_path, capsys, monkeypatch):
    """Repro: ``eval --tasks 'caption cls'`` (a space for the '_') or ``retreival`` said only "is not a task of the
    adapter", where ``train --tasks`` says "(did you mean 'caption_cls'?)"."""
    bb = load_backbone("builtin", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval", "caption_cls"], r=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": "builtin", "pretrained": None})
    monkeypatch.setattr(evaluate, "load_pretrained", None)   # (refused before it is called)
    for given, meant in (("caption cls", "caption_cls"), ("retreival", "retrieval"), ("VQA", "vqa")):
        assert eval_main(["--adapter", str(adapter), "--tasks", given, "--out", str(tmp_path / "ev")]) == 2
        err = capsys.readouterr().err
        assert f"--tasks: {given!r} is not a task of the adapter" in err and f"(did you mean {meant!r}?)" in err, err
        assert eval_main(["--tasks", given, "--out", str(tmp_path / "ev")]) == 2   # train's rule (no --adapter)
        assert f"(did you mean {meant!r}?)" in capsys.readouterr().err
    assert eval_main(["--adapter", str(adapter), "--tasks", "vqa retrieval", "--out", str(tmp_path / "ev")]) == 2
    assert "(task names are separated by commas: --tasks vqa,retrieval)" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
