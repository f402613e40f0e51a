"""Did-you-means that named the wrong flag (closing note 63, section 4): ``--data-seed 3``, ``--data-split val`` and
``--data-workers 4`` were told ``--data-root`` (spelt alike: the data word only says whose seed, split, workers);
``--cpu 1`` and ``--gpu 0,1`` a bare ``--device``; ``--dataset lmms-lab/VQAv2`` (a hub id) ``--data-root``."""

from __future__ import annotations

import pytest

from mtl_lora_vl.benchmark.cli import main as bench_main
from mtl_lora_vl.cli import parse_eval_args, parse_train_args
from mtl_lora_vl.cli.flag_hints import closest_flag, hint_text


def _refusal(capsys, parse, argv: list[str]) -> str:
    """The "unrecognized arguments" line ``parse`` refuses ``argv`` with."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    return next(line for line in capsys.readouterr().err.splitlines() if "unrecognized arguments" in line)


@pytest.mark.parametrize(("parse", "argv", "says"), [
    (parse_train_args, ["--data-seed", "3"], "--data-seed (did you mean --seed?)"),
    (parse_train_args, ["--data-seed=3"], "--data-seed (did you mean --seed?)"),
    (parse_train_args, ["--data-workers", "4"], "--data-workers (did you mean --workers?)"),
    (parse_eval_args, ["--data-workers", "4"], "--data-workers (did you mean --workers?)"),
    (parse_eval_args, ["--data-split", "val"], "--data-split (did you mean --split?)"),
    (parse_eval_args, ["--dataset-split", "val"], "--dataset-split (did you mean --split?)"),
    # train has no flag choosing the rows it trains on: the split scored, and where the training rows are chosen
    (parse_train_args, ["--data-split", "val"],
     "--data-split (did you mean --eval-split? the split scored at the end; the rows trained on: a task spec's "
     "[data.train])"),
])
def test_a_flag_of_the_data_is_told_the_flag_for_what_it_names(capsys, parse, argv, says):
    line = _refusal(capsys, parse, argv)
    assert says in line, line
    assert "--data-root" not in line


@pytest.mark.parametrize("parse", [parse_train_args, parse_eval_args])
def test_a_split_no_flag_reads_is_told_where_rows_are_chosen(capsys, parse):
    line = _refusal(capsys, parse, ["--data-split", "train[:10%]"])
    assert ("--data-split (no flag chooses a task's rows: a task spec's split option does ([data.train] or "
            "[data.test] split = \"train[:10%]\"), the spec given to --tasks)") in line, line


def test_no_flag_of_the_data_leaves_the_hint_out():
    """eval has no seed: ``--data-seed`` is told nothing, not ``--data-root``; a close spelling of ``--data-root``
    is still told it."""
    flags = ["--tasks", "--data-root", "--split", "--workers"]
    assert closest_flag("--data-seed", flags, value="3") is None
    assert closest_flag("--data-rot", flags, value="/data") == "--data-root"
    assert closest_flag("--data-roots", flags, value="/data") == "--data-root"
    assert closest_flag("--data-dir", flags, value="/data") == "--data-root"   # (a folder's word, as before)


@pytest.mark.parametrize(("argv", "says"), [
    (["--cpu", "1"], "--cpu (did you mean --device cpu?)"),
    (["--cpu", "yes"], "--cpu (did you mean --device cpu?)"),
    (["--cpu", "false"], "--cpu (did you mean --device?)"),
    (["--gpu", "1"], "--gpu (did you mean --device cuda:1?)"),
    (["--gpu", "0,1"], "--gpu (did you mean --device cuda:0? that is one GPU; 2 GPUs run as 2 processes, one a GPU: "
                       "CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc_per_node 2 ... with --device cuda (or auto))"),
    (["--gpus", "2,3,5"], "CUDA_VISIBLE_DEVICES=2,3,5 torchrun --nproc_per_node 3"),
    (["--num-gpus", "2"], "--num-gpus (did you mean --device cuda? 2 GPUs run as 2 processes, one a GPU: torchrun "
                          "--nproc_per_node 2 ... with --device cuda (or auto))"),
])
def test_a_device_given_as_a_switch_is_told_the_device_and_how_several_gpus_run(capsys, argv, says):
    line = _refusal(capsys, parse_train_args, argv)
    assert says in line, line


@pytest.mark.parametrize("argv", [["--num-gpus", "1"], ["--gpus", "0"], ["--gpus", "1"]])
def test_one_gpu_is_not_told_how_several_run(capsys, argv):
    """``--num-gpus 1`` (a count of one) or ``--gpus 0`` (one GPU's number) is no several GPUs: not told torchrun or
    "1 GPUs run as 1 processes"."""
    line = _refusal(capsys, parse_train_args, argv)
    assert argv[0] in line and "torchrun" not in line and "processes" not in line, line


def test_bench_is_told_it_runs_on_one_gpu(capsys):
    """bench runs no torchrun: several GPUs are told the one it runs on (each argv holds an unknown flag: refused
    before anything runs)."""
    assert ("--gpu (did you mean --device cuda:0? that is one GPU; this command runs on one GPU) 0,1"
            in _refusal(capsys, bench_main, ["--gpu", "0,1"]))
    assert ("--num-gpus (did you mean --device cuda? this command runs on one GPU) 2"
            in _refusal(capsys, bench_main, ["--num-gpus", "2"]))


@pytest.mark.parametrize("typo", ["--dataset", "--dataset-name", "--data"])
def test_a_hub_dataset_is_told_how_it_is_read(capsys, tmp_path, monkeypatch, typo):
    monkeypatch.chdir(tmp_path)
    line = _refusal(capsys, parse_train_args, [typo, "lmms-lab/VQAv2"])
    assert (f"{typo} (did you mean --tasks SPEC.toml? a hub dataset is read from its downloaded files: a task spec's "
            "[data] names them (format = \"hf_datasets\", path = their folder; README, Tasks); a folder: --data-root "
            "(no folder lmms-lab/VQAv2 is here))") in line, line
    (tmp_path / "lmms-lab" / "VQAv2").mkdir(parents=True)   # a folder of that name here: the folder
    assert closest_flag(typo, ["--tasks", "--data-root"], value="lmms-lab/VQAv2") == "--data-root"
    assert closest_flag("--data-dir", ["--tasks", "--data-root"], value="org/name") == "--data-root"   # a folder's word


def test_the_hint_text_holds_a_note_after_the_question_or_alone():
    assert hint_text("--lr") == "(did you mean --lr?)"
    assert hint_text("--device cuda:0; that is one GPU") == "(did you mean --device cuda:0? that is one GPU)"
    assert hint_text("; no flag does it") == "(no flag does it)"


@pytest.mark.parametrize(("parse", "value"), [(parse_train_args, "data/vqav2"), (parse_eval_args, "data/vqav2"),
                                              (parse_train_args, "Images/coco"), (parse_train_args, "mine/vqav2")])
def test_a_missing_folder_shaped_as_a_hub_id_is_told_data_root(capsys, tmp_path, monkeypatch, parse, value):
    """``--dataset data/vqav2`` (a relative folder, not here) was told only how a hub dataset is read: a path whose
    first part is a data or image word, or a folder here, is a folder's, told --data-root and that it is not here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    line = _refusal(capsys, parse, ["--dataset", value])
    assert (f"--dataset (did you mean --data-root? no folder {value} is here (a relative path is read from the "
            "current folder))") in line, line
    (tmp_path / value).mkdir(parents=True)   # the flag takes it (parsed only: nothing runs; eval wants an adapter)
    more = ["--tasks", "vqa"] if parse is parse_eval_args else []
    assert parse(["--data-root", value, *more]).data_root.endswith(value)
