"""``--adapter RUN/adapter`` (README's form) of a run that was stopped (Ctrl-C, SIGTERM) before it finished says that
the run has not finished and how to finish it; it said "does not exist (moved or renamed?)", as for a wrong path
(review 225)."""
import pytest

from mtl_lora_vl.cli.commands import eval_main
from mtl_lora_vl.cli.export import export_main
from mtl_lora_vl.io.layout import AdapterFileError, adapter_layout


@pytest.fixture
def stopped_run(tmp_path):
    run = tmp_path / "run 1"   # what a stopped run leaves: its options and a checkpoint, no adapter/ yet
    run.mkdir()
    (run / "config.json").write_text('{"tasks": "vqa", "method": "mtl_lora", "out": "x"}')
    (run / "checkpoint.pt").write_bytes(b"")
    return run


def test_the_adapter_of_a_stopped_run_says_the_run_has_not_finished(stopped_run, tmp_path, capsys):
    with pytest.raises(AdapterFileError, match=r"does not exist yet: .* is a training run that has not finished .*"
                                               r"`train_vl.py --resume .*run 1`"):
        adapter_layout(stopped_run / "adapter")
    assert eval_main(["--adapter", str(stopped_run / "adapter"), "--out", str(tmp_path / "ev")], prog="x") == 2
    assert "is a training run that has not finished" in capsys.readouterr().err
    assert export_main(["--adapter", str(stopped_run / "adapter"), "--task", "vqa", "--out", str(tmp_path / "ex")],
                       prog="x") == 2
    assert "is a training run that has not finished" in capsys.readouterr().err


def test_a_missing_adapter_elsewhere_is_still_a_wrong_path(tmp_path):
    with pytest.raises(AdapterFileError, match=r"does not exist \(moved or renamed\?\)"):
        adapter_layout(tmp_path / "adapter")   # (its folder is no run)
    with pytest.raises(AdapterFileError, match=r"does not exist \(moved or renamed\?\)"):
        adapter_layout(tmp_path / "nothing")
