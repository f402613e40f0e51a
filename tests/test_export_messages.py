"""The export command and apply_plain_lora name what is wrong: a --backbone other than the recorded one, a user's
file at --out, a folder that is not one plain LoRA, a PEFT export of attention adapters and a merged file of an
inner model's adapter (both refused before the base loads); and the command replaces a multi-task export that
export_lora wrote."""
from __future__ import annotations

import pytest

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones.loading import load_backbone
from mtl_lora_vl.cli.export import export_main


def _adapter(tmp_path, spec):
    bb = load_backbone(spec)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    return mlv.save_adapter(bb.model, tmp_path / f"ad_{spec}", base={"backbone": spec})


def _error(capsys, argv):
    assert export_main(argv) == 2
    return capsys.readouterr().err


def test_a_wrong_backbone_family_names_the_option_and_the_recorded_base(tmp_path, capsys):
    """F1: `export --backbone builtin` on a builtin-llava adapter said only 'load it onto the base model it was
    trained on'; the user's --backbone is the cause and the adapter's recorded backbone the fix."""
    ad = _adapter(tmp_path, "builtin-llava")
    err = _error(capsys, ["--adapter", str(ad), "--task", "vqa", "--backbone", "builtin", "--out", str(tmp_path / "o")])
    assert "family llava" in err and "open_clip" in err          # today's message
    assert "--backbone" in err and "'builtin-llava'" in err       # fails today
    assert not (tmp_path / "o").exists()


def test_eval_names_a_wrong_backbone_as_export_does(tmp_path):
    """eval --backbone X on an adapter of another family gave the bare error, without export's hint (helper 138)."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
    from mtl_lora_vl.io.layout import AdapterFileError

    ad = _adapter(tmp_path, "builtin-llava")
    with pytest.raises(AdapterFileError, match=r"--backbone builtin given; the adapter records backbone "
                                               r"'builtin-llava'"):
        evaluate_adapter(ad, backbone="builtin", out=tmp_path / "e", device="cpu")
    assert not (tmp_path / "e").exists()


def test_an_existing_file_that_is_not_an_export_is_not_told_to_use_overwrite(tmp_path, capsys):
    """F2: an existing user .safetensors at --out: without --overwrite the message says 'pass --overwrite',
    and with --overwrite export then refuses the same file ('not a merged checkpoint written by export')."""
    ad = _adapter(tmp_path, "builtin")
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"my own file")
    err = _error(capsys, ["--adapter", str(ad), "--task", "vqa", "--out", str(mine)])
    assert "not a merged checkpoint written by export" in err   # fails today: "pass overwrite=True (--overwrite)"
    err2 = _error(capsys, ["--adapter", str(ad), "--task", "vqa", "--out", str(mine), "--overwrite"])
    assert "not a merged checkpoint written by export" in err2
    assert mine.read_bytes() == b"my own file"


def test_apply_plain_lora_says_what_a_folder_is_when_it_is_not_one_plain_lora(tmp_path):
    """F3: apply_plain_lora on the folder of a multi-task plain export (the natural thing to pass), on a PEFT
    export or on a native adapter said only 'lora_config.json: unreadable ([Errno 2] No such file ...)'."""
    from mtl_lora_vl.io import AdapterFileError, apply_plain_lora

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    out = mlv.export_lora(bb.model, ["vqa", "captioning"], tmp_path / "plain")
    native = mlv.save_adapter(bb.model, tmp_path / "native")
    with pytest.raises(AdapterFileError) as e:
        apply_plain_lora(load_backbone("builtin").model, out)
    assert "captioning" in str(e.value) and "vqa" in str(e.value)      # fails today: names the subfolders
    with pytest.raises(AdapterFileError) as e:
        apply_plain_lora(load_backbone("builtin").model, native)
    assert "load_adapter" in str(e.value) or "MTL-LoRA adapter" in str(e.value)   # fails today


def test_the_export_command_can_overwrite_a_multi_task_export_written_by_export_lora(tmp_path, capsys):
    """F4: export_lora(model, [tasks], OUT) records the export in OUT only (OUT/mtl_lora_export.json), so
    `export --task a,b --out OUT --overwrite` calls OUT/<task> 'not an earlier output of export' and refuses."""
    ad = _adapter(tmp_path, "builtin")
    lp = mlv.load_pretrained(ad, heads=False)
    out = mlv.export_lora(lp.backbone.model, ["vqa", "captioning"], tmp_path / "loras")
    code = export_main(["--adapter", str(ad), "--task", "vqa,captioning", "--format", "plain", "--out", str(out),
                        "--overwrite"])
    # today: 2, "--out .../vqa: is not empty and holds no mtl_lora_export.json"
    assert code == 0, capsys.readouterr().err


def test_peft_format_for_an_attention_adapter_is_refused_before_the_base_model_loads(tmp_path, capsys, monkeypatch):
    """F5 (minor): `export --format peft` of an open_clip adapter (nn.MultiheadAttention in-projections) is refused
    only after the whole base model is built (minutes for a large checkpoint); the adapter's config already says
    so. The message's fix should also name the command's flag (--format merged), not only 'a merged checkpoint'."""
    import mtl_lora_vl.cli.export_tasks as cli

    ad = _adapter(tmp_path, "builtin")
    monkeypatch.setattr(cli, "load_pretrained", lambda *a, **k: pytest.fail("base model loaded before the refusal"))
    err = _error(capsys, ["--adapter", str(ad), "--task", "vqa", "--format", "peft", "--out", str(tmp_path / "o")])
    assert "MultiheadAttention" in err and "--format plain" in err and "--format merged" in err


def test_a_merged_file_of_an_inner_models_adapter_is_refused_before_the_base_model_loads(tmp_path, capsys,
                                                                                           monkeypatch):
    """An adapter saved from a LLaVA whose inner LlavaModel was adapted on its own records family custom: `export
    --out m.safetensors` loaded the whole base model before save_merged refused (with its API's words, 'out=')."""
    import mtl_lora_vl.cli.export_tasks as cli

    bb = load_backbone("builtin-llava")
    mlv.attach(bb.model.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2, n_up=1,
                                                 targets={"text": [r"language_model\.layers\.0\.self_attn\.q_proj$"]}))
    ad = mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin-llava"})
    monkeypatch.setattr(cli, "load_pretrained", lambda *a, **k: pytest.fail("base model loaded before the refusal"))
    err = _error(capsys, ["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "m.safetensors")])
    assert "--out" in err and "(llava)" in err and "save_pretrained directory" in err and "folder name" in err


def test_export_says_which_tasks_leave_a_trained_head_behind(tmp_path, capsys):
    """An exported task whose head holds trained tensors (a classifier, NLVR2's pair head: PEFT's modules_to_save)
    loses it silently: no export format carries the package's heads."""
    from torch import nn

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    ad = mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin"}, heads={"vqa": nn.Linear(4, 3)})
    for task in ("vqa", "captioning"):
        assert export_main(["--adapter", str(ad), "--task", task, "--format", "plain",
                            "--out", str(tmp_path / task)]) == 0
        err = capsys.readouterr().err
        assert ("task 'vqa' has trained heads" in err and "heads.safetensors" in err) == (task == "vqa"), err
