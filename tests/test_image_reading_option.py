"""``--image-reading {native,square}`` (``load_backbone(image_reading=...)``): a backbone that reads each image either
at its own aspect or on one square (LLaVA-NeXT, LLaVA-OneVision, Idefics3 / SmolVLM) reads them as asked, from the
command line of train and of eval without ``--adapter``; the adapter records the reading, and ``load_pretrained``,
``eval --adapter``, ``--extend`` and ``--resume`` keep it (another one asked for is refused by name). Backbones that
read images one way refuse the option. Tiny models from configs, CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import test_llava_next
import test_llava_onevision
import torch
from idefics3_tiny import _num2words, save_tiny_idefics3  # noqa: F401 (an autouse fixture)
from qwen_tiny import save_tiny_qwen2vl

import mtl_lora_vl.evaluation.evaluate as evaluate_module
import mtl_lora_vl.training.checkpoint as checkpoint
from mtl_lora_vl.backbones import BackboneError, load_backbone
from mtl_lora_vl.backbones.image_record import image_record
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.io.pretrained import load_pretrained

BUILDERS = {"llava_next": lambda out: test_llava_next.build(out)[2],
            "llava_onevision": lambda out: test_llava_onevision.build(out)[2],
            "idefics3": save_tiny_idefics3}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_load_backbone_reads_images_as_asked(family, tmp_path):
    folder = BUILDERS[family](tmp_path / family)
    assert load_backbone(f"hf:{folder}").resize.mode == "anyres"   # their default: the processor's own reading
    square = load_backbone(f"hf:{folder}", image_reading="square")
    assert square.resize.mode == "squash" and not square.needs_image_sizes
    assert image_record(square.model).reading == "square"   # what save_adapter records
    row = square.lm_collator()([f"{square.image_token} caption:"])["input_ids"][0].tolist()
    assert row.count(square.image_token_id) == square.num_image_tokens
    if family == "idefics3":
        assert square.processor.image_processor.do_image_splitting is False
    native = load_backbone(f"hf:{folder}", image_reading="native")
    assert native.resize.mode == "anyres" and native.needs_image_sizes


def test_backbones_that_read_images_one_way_refuse_it_by_name(tmp_path):
    qwen = save_tiny_qwen2vl(tmp_path / "qwen")
    for spec in ("builtin", "builtin-llava", f"hf:{qwen}"):
        with pytest.raises(BackboneError, match=r"image_reading 'square' \(--image-reading\) applies to backbones "
                                                r"that can read .*reads images one way only: leave the option out"):
            load_backbone(spec, image_reading="square")
    folder = save_tiny_idefics3(tmp_path / "idefics3")
    with pytest.raises(BackboneError, match=r"image_reading 'tiles' \(--image-reading\): must be one of "
                                            r"\['native', 'square'\]"):
        load_backbone(f"hf:{folder}", image_reading="tiles")
    # a processor whose splitting cannot be followed exactly (do_resize off): unsplit squares only
    path = folder / "processor_config.json"
    cfg = json.loads(path.read_text())
    cfg["image_processor"]["do_resize"] = False
    path.write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match=r"image_reading 'native' \(--image-reading\): .*can be read unsplit "
                                            r"only; leave the option out, or give --image-reading square"):
        load_backbone(f"hf:{folder}", image_reading="native")


def _specs(root):
    specs = []
    for name in ("vqa", "captioning"):
        (root / f"{name}.toml").write_text(f'name = "{name}"\nkind = "{name}"\n[data]\nsource = "builtin"\n'
                                           '[data.train]\nn = 8\n[data.val]\nn = 2\n[data.test]\nn = 2\n'
                                           '[generative]\neval_limit = 2\n')
        specs.append(str(root / f"{name}.toml"))
    return specs


def _train(*args: str) -> int:
    return train_main(["--steps", "1", "--batch-size", "4", "--warmup", "0", "--workers", "0", "--eval-batch-size",
                       "4", "--skip-zero-shot", "-q", *args])


@pytest.fixture(scope="module")
def square_run(tmp_path_factory):
    """A tiny LLaVA-NeXT run trained with --image-reading square on vqa: (folder, specs, run directory)."""
    root = tmp_path_factory.mktemp("square_run")
    folder = test_llava_next.build(root / "next")[2]
    specs = _specs(root)
    assert _train("--backbone", f"hf:{folder}", "--tasks", specs[0], "--image-reading", "square",
                  "--out", str(root / "run")) == 0
    return folder, specs, root / "run"


def _recorded(run) -> tuple[str | None, str | None]:
    """The run's config.json image_reading and its adapter's base.image_reading."""
    config = json.loads((run / "config.json").read_text())
    base = json.loads((run / "adapter" / "mtl_lora_config.json").read_text())["base"]
    return config.get("image_reading"), base.get("image_reading")


@pytest.fixture
def scored_reading(monkeypatch):
    """The resize mode of each backbone eval scores with ("squash": on one square; "anyres": its own aspect)."""
    modes = []
    real = evaluate_module.evaluate_setup

    def spy(setup, **kw):
        modes.append(setup.backbone.resize.mode)
        return real(setup, **kw)

    monkeypatch.setattr(evaluate_module, "evaluate_setup", spy)
    return modes


def test_a_square_run_is_recorded_and_read_back_square(square_run, tmp_path, scored_reading, capsys):
    _, _, run = square_run
    assert _recorded(run) == ("square", "square")
    assert load_pretrained(run / "adapter", heads=False).backbone.resize.mode == "squash"
    assert eval_main(["--adapter", str(run / "adapter"), "--out", str(tmp_path / "ev"), "-q"]) == 0
    assert scored_reading == ["squash"]
    capsys.readouterr()
    assert eval_main(["--adapter", str(run / "adapter"), "--image-reading", "native",
                      "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert "--image-reading native: the adapter records how its tasks' images were read (base.image_reading " \
           "'square')" in err and "leave the option out" in err


def test_eval_without_an_adapter_reads_as_asked(square_run, tmp_path, scored_reading):
    folder, specs, _ = square_run
    common = ["--backbone", f"hf:{folder}", "--tasks", specs[0], "--batch-size", "4", "-q"]
    assert eval_main([*common, "--image-reading", "square", "--out", str(tmp_path / "sq")]) == 0
    assert eval_main([*common, "--out", str(tmp_path / "own")]) == 0
    assert scored_reading == ["squash", "anyres"]
    assert json.loads((tmp_path / "sq" / "eval.json").read_text())["backbone"]["image_reading"] == "square"


def test_extend_takes_the_adapters_reading_and_refuses_another(square_run, tmp_path, capsys):
    _, specs, run = square_run
    assert _train("--extend", str(run), "--tasks", specs[1], "--out", str(tmp_path / "b")) == 0
    assert _recorded(tmp_path / "b") == ("square", "square")
    assert load_pretrained(tmp_path / "b" / "adapter", heads=False).backbone.resize.mode == "squash"
    capsys.readouterr()
    assert _train("--extend", str(run), "--tasks", specs[1], "--image-reading", "native",
                  "--out", str(tmp_path / "c")) != 0
    err = capsys.readouterr().err
    assert "the new tasks read images as the adapter's were read (image_reading square), so --image-reading " \
           "native would be ignored" in err
    assert not (tmp_path / "c").exists()


def test_resume_keeps_the_runs_reading(square_run, capsys):
    _, _, run = square_run
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--image-reading", "native", "-q"]) != 0
    assert "--image-reading 'native' (the run has 'square')" in capsys.readouterr().err
    assert train_main(["--resume", str(run), "-q"]) == 0   # finished: its final evaluation again, the adapter resaved
    assert _recorded(run) == ("square", "square")


def test_an_extend_run_from_before_the_option_resumes_twice(square_run, tmp_path, monkeypatch, capsys):
    """An --extend run whose config.json and checkpoint predate --image-reading (no image_reading key), resumed:
    its checkpoints then recorded the adapter's reading while config.json kept none, so the next --resume was
    refused with 'config.json was edited since the run's checkpoint: image_reading None (the checkpoint's:
    'square')'."""
    _, specs, run = square_run
    save = checkpoint.save_checkpoint

    def snapshot(state, run_dir):
        path = save(state, run_dir)
        if state["step"] == 1:
            shutil.copytree(run_dir, tmp_path / "old")
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", snapshot)
    assert _train("--extend", str(run), "--tasks", specs[1], "--steps", "2", "--save-every", "1",
                  "--out", str(tmp_path / "ext")) == 0
    monkeypatch.undo()
    old = tmp_path / "old"   # as a run started before the option wrote them
    config = json.loads((old / "config.json").read_text())
    del config["image_reading"]
    (old / "config.json").write_text(json.dumps(config))
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["options"]["image_reading"]
    torch.save(state, old / "checkpoint.pt")
    capsys.readouterr()
    assert train_main(["--resume", str(old), "-q"]) == 0   # steps 2..2, checkpointed
    assert train_main(["--resume", str(old), "-q"]) == 0, capsys.readouterr().err   # finished: evaluated again
    assert _recorded(old) == (None, "square")
