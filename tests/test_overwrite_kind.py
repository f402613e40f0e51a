"""``train --overwrite`` replaces a training run directory only: a folder whose config.json is some other program's
(a Hugging Face model, a merged export) was taken for a run and deleted (review 207)."""
import json
import os
from pathlib import Path

import pytest

import mtl_lora_vl.rundir as rundir
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import RunDirError, choose_run_dir, config_doc
from mtl_lora_vl.training.stopping import Terminated


def test_overwrite_refuses_a_model_folder_with_a_config_json(tmp_path, capsys):
    model = tmp_path / "llava-hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["Llava"]}))
    (model / "model.safetensors").write_bytes(b"weights")
    assert train_main(["--out", str(model), "--overwrite", "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "config.json is not a training run's" in err and "choose another --out" in err, err
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


def test_overwrite_still_replaces_a_run_that_wrote_only_its_config(tmp_path):
    run = tmp_path / "run"   # a run killed before its first checkpoint holds config.json alone
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_doc(run, TrainOptions(out=str(run)))))
    assert choose_run_dir(TrainOptions(out=str(run), overwrite=True)) == run


def _old_run_and_another_starting(tmp_path: Path, monkeypatch, written: bool) -> Path:
    """``tmp_path / "run"``, a run's folder (its config.json), where another run starts (makes run/, with a config.json
    of its own if ``written``) as soon as an --overwrite has set the old run aside (os.replace)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_doc(run, TrainOptions(out=str(run)))))
    real = os.replace

    def another_run_starts(src, dst):
        real(src, dst)
        if Path(src) == run:   # the old run set aside: the other run makes run/ now
            run.mkdir()
            if written:
                (run / "config.json").write_text("{}")

    monkeypatch.setattr(rundir.os, "replace", another_run_starts)
    return run


@pytest.mark.parametrize("other", ["empty", "written"])
def test_a_run_that_starts_in_out_after_the_old_run_was_set_aside_is_not_shared_and_the_old_run_is_named(
        tmp_path, monkeypatch, other):
    """Review h429: two runs raced on --out: this --overwrite had moved the old run to .run.replaced when another run
    made run/. Empty, this run took it as its own and ran beside the other; written, it was refused with "another run
    created or wrote to it" and nothing said that the old run was left in .run.replaced. Now it is refused naming it."""
    run = _old_run_and_another_starting(tmp_path, monkeypatch, written=other == "written")
    with pytest.raises(RunDirError, match=r"another run started in it .* moved to .*\.run\.replaced, where it is kept"):
        rundir.claim_run_dir(run, TrainOptions(out=str(run), overwrite=True), DistInfo())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.replaced", "run"]
    assert (tmp_path / ".run.replaced" / "config.json").is_file()


def test_a_sigterm_after_that_refusal_leaves_the_other_runs_folder_alone(tmp_path, monkeypatch):
    """Review h429: a SIGTERM (torchrun's) during claim_run_dir's broadcast of that refusal ran the put-back of the
    old run, which deleted run/ -- the other run's folder, its config.json -- and moved .run.replaced over it."""
    run = _old_run_and_another_starting(tmp_path, monkeypatch, written=True)

    def terminated(*args, **kwargs):
        raise Terminated

    monkeypatch.setattr(rundir, "broadcast_from_main", terminated)
    with pytest.raises(Terminated):
        rundir.claim_run_dir(run, TrainOptions(out=str(run), overwrite=True), DistInfo())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.replaced", "run"]
    assert (run / "config.json").read_text() == "{}"
