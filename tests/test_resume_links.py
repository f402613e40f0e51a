"""A resumed run folder holding a symbolic link out of it where the run writes is refused before anything runs:
the final ``save_adapter(RUN/adapter, overwrite=True)`` writes through the link, and replaced the folder it led to
(a run folder unpacked from a colleague's archive with ``adapter -> ~/Documents`` deleted Documents' files)."""

from __future__ import annotations

import json
import os

import pytest

from mtl_lora_vl import rundir
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import RunDirError, choose_run_dir


def _run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "vqa", "method": "mtl_lora", "out": str(run)}))
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    return run, docs


@pytest.mark.parametrize("name", ["adapter", "predictions", "report.md", "metrics.jsonl", "checkpoint-rank1.pt"])
def test_a_link_out_of_the_run_folder_where_the_run_writes_is_refused_on_resume(tmp_path, name):
    run, docs = _run(tmp_path)
    (run / name).symlink_to(docs if name in ("adapter", "predictions") else docs / "thesis.tex")
    with pytest.raises(RunDirError, match=rf"{name} is a symbolic link to .*Documents.*out of the run folder.*"
                                          r"remove the link"):
        choose_run_dir(TrainOptions(resume=str(run)))
    assert (docs / "thesis.tex").read_text() == "years of work"


def test_links_inside_the_run_folder_and_links_elsewhere_in_it_are_left_alone(tmp_path):
    run, docs = _run(tmp_path)
    (run / "old_adapter").mkdir()
    (run / "adapter").symlink_to("old_adapter")          # stays in the folder
    (run / "notes").symlink_to(docs)                     # not something the run writes
    assert choose_run_dir(TrainOptions(resume=str(run))) == run


@pytest.mark.parametrize("name", ["adapter", "metrics.jsonl", "checkpoint.pt"])
def test_a_dangling_link_where_the_run_writes_is_refused_on_resume(tmp_path, name):
    # (an archive's absolute link into its author's home): run.glob('adapter') never listed it, so the resume trained
    # on and failed only at its first checkpoint or final adapter save; metrics.jsonl was appended through the link
    run, docs = _run(tmp_path)
    (run / name).symlink_to(docs / "gone" / name)
    with pytest.raises(RunDirError, match=rf"{name} is a symbolic link to .*gone.*which does not exist.*remove the "
                                          "link"):
        choose_run_dir(TrainOptions(resume=str(run)))


@pytest.mark.parametrize("dangling", [True, False])
def test_a_link_named_in_another_case_is_refused_where_the_file_system_folds_case(tmp_path, monkeypatch, dangling):
    # (macOS, Windows: the run's RUN/adapter is the entry ADAPTER, so save_adapter wrote through the link)
    run, docs = _run(tmp_path)
    (run / "ADAPTER").symlink_to(docs / "gone" if dangling else docs)
    if not rundir._folds_case(run):   # (Linux) ADAPTER is not where the run writes
        assert choose_run_dir(TrainOptions(resume=str(run))) == run
    monkeypatch.setattr(rundir, "_folds_case", lambda folder: folder == run)
    with pytest.raises(RunDirError, match=r"ADAPTER is a symbolic link to .*(does not exist|out of the run folder)"):
        choose_run_dir(TrainOptions(resume=str(run)))


def test_the_case_probe_finds_config_json_again_in_another_case_only_as_the_same_file(tmp_path):
    run, _ = _run(tmp_path)
    if (run / "CONFIG.JSON").exists():
        pytest.skip("this file system folds case: the probe is checked where names are told apart")
    assert not rundir._folds_case(run)
    (run / "CONFIG.JSON").write_text("{}")        # another file: the names are told apart
    assert not rundir._folds_case(run)
    (run / "CONFIG.JSON").unlink()
    os.link(run / "config.json", run / "CONFIG.JSON")   # the same file under both names, as a folding system finds it
    assert rundir._folds_case(run)
    out = tmp_path / "eval-out"   # an eval --out has no config.json: its own entries are probed (PREDICTIONS.PARTIAL
    out.mkdir()                   # out of it was missed on macOS / Windows)
    (out / "predictions.partial").symlink_to(tmp_path)
    (out / "eval.json").write_text("{}")
    assert not rundir._folds_case(out)
    os.link(out / "eval.json", out / "EVAL.JSON")
    assert rundir._folds_case(out)
