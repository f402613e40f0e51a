"""The did-you-mean of a mistyped flag: difflib's closest spelling alone told ``--checkpoint-every 100``
``--grad-checkpointing`` (a switch, taking no number), ``--eval-steps`` ``--eval-split``, ``--save-steps``
``--steps``, ``--max-steps`` ``--max-bad-steps``, and ``--learning-rate`` / ``--output-dir`` nothing."""

from __future__ import annotations

import pytest

from mtl_lora_vl.benchmark.cli import main as bench_main
from mtl_lora_vl.cli import parse_eval_args, parse_train_args
from mtl_lora_vl.cli.flag_hints import closest_flag


def _hint(capsys, parse, argv: list[str]) -> str | None:
    """The flag the refusal of ``argv`` suggests (None: no hint)."""
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if "error:" in line)
    assert "unrecognized arguments" in line
    return line.split("(did you mean ")[1].split("?)")[0] if "(did you mean " in line else None


#: Typos of train's flags, many of them another tool's spelling (Hugging Face Trainer's), and the flag meant.
TRAIN_TYPOS = [
    (["--checkpoint-every", "100"], "--save-every"),    # was --grad-checkpointing
    (["--save-steps", "100"], "--save-every"),          # was --steps
    (["--eval-steps", "100"], "--eval-every"),          # was --eval-split
    (["--max-steps", "100"], "--steps"),                # was --max-bad-steps
    (["--learning_rate", "1e-4"], "--lr"),              # was none
    (["--learning-rate", "1e-4"], "--lr"),              # was none
    (["--output-dir", "runs/x"], "--out"),              # was none
    (["--grad-accum", "4"], "--accumulate"),            # was --grad-clip
    (["--lr_rate", "1e-4"], "--lr"),
    (["--batchsize", "8"], "--batch-size"),
    (["--epoch", "2"], "--epochs"),
    (["--num-epochs", "2"], "--epochs"),
    (["--task", "vqa"], "--tasks"),
    (["--output", "runs/x"], "--out"),
    (["--warmup-steps", "10"], "--warmup"),
    (["--lora-rank", "8"], "--rank"),
    (["--lora_alpha", "16"], "--alpha"),
    (["--num-workers", "4"], "--workers"),
    (["--eval-batch", "8"], "--eval-batch-size"),
    (["--mixed-precision", "bf16"], "--precision"),
    (["--gradient-checkpointing"], "--grad-checkpointing"),
    (["--checkpointing"], "--grad-checkpointing"),
    (["--gradient-clip", "1"], "--grad-clip"),
    (["--no-compiling"], "--no-compile"),
    (["--step", "3"], "--steps"),
    (["--batch=4"], "--batch-size"),
    (["--verbos"], "--verbose"),
    (["--lr-schedule", "cosine"], None),
    (["--compile-mode", "x"], None),                    # was --batch-mode (a mode of another thing)
    (["--save-total-limit", "3"], None),                # was --eval-split (no word shared)
    (["--optim", "adamw"], None),                       # was --out
    (["--cache-dir", "x"], None),                       # was --head-lr
    (["--max-grad-norm", "1"], "--grad-clip"),          # was --max-bad-steps, then none (HF's clipping norm)
    (["--temp", "0.5"], "--temperature"),               # was --steps (temp begins temperature)
    (["--dtype", "bf16"], "--base-dtype"),              # the one word it names, last of both
    (["--decay", "0.1"], "--weight-decay"),
    # Hugging Face Trainer's / PEFT's names for train's flags
    (["--eval-strategy", "steps"], "--eval-every"),     # was --eval-split
    (["--evaluation-strategy", "steps"], "--eval-every"),   # was none
    (["--save-strategy", "steps"], "--save-every"),
    (["--image-size", "224"], "--image-max-pixels"),    # was --image-reading (native / square, no size)
    (["--img-size", "224"], "--image-max-pixels"),
    (["--image-resolution", "448"], "--image-max-pixels"),   # was --image-reading
    (["--lora-r", "8"], "--rank"),                      # was none (PEFT's r)
    (["--r", "8"], "--rank"),                           # was --lr
    (["--lora-alpha", "16"], "--alpha"),
    (["--lora-dropout", "0.1"], "--dropout"),
    (["--per-device-train-batch-size", "8"], "--batch-size"),   # was --eval-batch-size
    (["--per-device-eval-batch-size", "8"], "--eval-batch-size"),
    (["--num-train-epochs", "2"], "--epochs"),
    (["--wd", "0.1"], "--weight-decay"),
    (["--random-seed", "1"], "--seed"),
    (["--bf16"], "--precision bf16"),                   # was none
    (["--fp16"], "--precision fp16"),
    (["--bf16", "false"], "--precision"),
    (["--torch-compile"], "--compile"),                 # was --no-compile
    (["--disable-compile"], "--no-compile"),
    (["--model", "hf:x"], "--backbone"),                # was --batch-mode
    (["--model-name-or-path", "hf:x"], "--backbone"),
    (["--early-stopping-patience", "3"], "--patience"),
    (["--dataloader-num-workers", "2"], "--workers"),
    (["--lr-scheduler-type", "cosine"], None),          # the schedule is cosine, no flag
    # a flag that cannot read the typo's value is not named (a wrong flag is worse than none)
    (["--warmup-ratio", "0.1"], None),                  # was --warmup, whole steps (0.1 of the steps is no count)
    (["--warmup_ratio=0.03"], None),                    # was --warmup
    (["--save-path", "runs/x"], None),                  # was --save-every (a number of steps)
    (["--task-name", "vqa"], "--tasks"),                # was --task-lr-mult (a number)
    (["--lrs", "1e-3,3e-3"], None),                     # was --lr (one number)
    (["--seeds", "3"], None),                           # was --seed: a count of seeds (bench's) is no seed
    (["--n-seeds", "3"], None),                         # was --seed
    # helper 512: a dataset by its value, a count's "n", the opposite of a --skip- flag, --log-level's values
    (["--dataset", "vqa.toml"], "--tasks"),             # was --data-root (a spec file is a task)
    (["--dataset", "vqa,retrieval"], "--tasks"),        # was --data-root
    (["--dataset-name", "vqa"], "--tasks"),             # was none (Hugging Face's name of a dataset)
    (["--dataset", "/data/vqav2"], "--data-root"),
    (["--dataset-dir", "/data/vqav2"], "--data-root"),  # was none
    (["--image-folder", "/data/coco"], "--data-root"),  # was none (LLaVA's image folder)
    (["--data-path", "train.json"], None),              # was --data-root, a folder (no flag reads a data file)
    (["--n-val", "100"], None),                         # was --n-up, the number of up-projections
    (["--eval", "val"], "--eval-split"),
    (["--eval", "100"], "--eval-every"),
    (["--eval"], "--eval-val"),                         # the one switch that adds an evaluation (the end's is there)
    (["--do-eval"], "--eval-val"),                      # Hugging Face's: evaluate on the validation split
    (["--zero-shot"], None),                            # was --skip-zero-shot, the opposite
    (["--zeroshot"], None),                             # was --skip-zero-shot
    (["--no-zero-shot"], "--skip-zero-shot"),           # was --no-skip-zero-shot (zero-shot on: the opposite)
    (["--skip-compile"], "--no-compile"),               # was none
    (["--log-dir", "runs/x"], None),                    # was --log-level (a level name)
    (["--cpu"], "--device cpu"),                        # was none
    (["--gpu", "1"], "--device cuda:1"),                # was none
]


@pytest.mark.parametrize("argv, meant", TRAIN_TYPOS, ids=[a[0] for a, _ in TRAIN_TYPOS])
def test_a_mistyped_train_flag_is_told_the_flag_it_means(capsys, argv, meant):
    assert _hint(capsys, parse_train_args, argv) == meant


def test_other_commands_are_told_only_their_own_flags(capsys):
    assert _hint(capsys, parse_eval_args, ["--output-dir", "x"]) == "--out"
    assert _hint(capsys, parse_eval_args, ["--checkpoint-every", "100"]) is None   # eval saves nothing
    assert _hint(capsys, parse_eval_args, ["--lr_rate", "1e-4"]) is None   # was --overwrite, a switch
    assert _hint(capsys, parse_eval_args, ["--eval-strategy", "steps"]) is None   # eval evaluates once
    assert _hint(capsys, parse_eval_args, ["--per-device-eval-batch-size", "8"]) == "--batch-size"
    assert _hint(capsys, parse_eval_args, ["--bf16"]) == "--precision bf16"
    assert _hint(capsys, parse_eval_args, ["--image-size", "224"]) == "--image-max-pixels"
    assert _hint(capsys, parse_eval_args, ["--log-every", "10"]) is None   # was --log-level, a level name
    assert _hint(capsys, parse_eval_args, ["--dataset", "vqa.toml"]) == "--tasks"   # was --data-root
    assert _hint(capsys, parse_eval_args, ["--zero-shot"]) is None
    with pytest.raises(SystemExit):
        bench_main(["--max-steps", "5", "--output-dir", "x"])
    err = capsys.readouterr().err
    assert "--max-steps (did you mean --steps?) 5 --output-dir (did you mean --out?) x" in err


def _bench_hints(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        bench_main(argv)   # (each argv holds an unknown flag: refused before anything runs)
    assert info.value.code == 2
    return next(line for line in capsys.readouterr().err.splitlines() if "unrecognized arguments" in line)


def test_bench_names_no_flag_that_means_another_thing_or_cannot_read_the_value(capsys):
    """bench's ``--seed 3`` was told ``--seeds`` (how many seeds, not which), ``--warmup-ratio 0.1`` ``--warmup``
    (whole steps) and ``--test-split val`` ``--test-n`` (a number of scenes)."""
    assert _bench_hints(capsys, ["--seed", "3"]).endswith("unrecognized arguments: --seed 3")
    assert _bench_hints(capsys, ["--warmup-ratio", "0.1"]).endswith("unrecognized arguments: --warmup-ratio 0.1")
    assert _bench_hints(capsys, ["--test-split", "val"]).endswith("unrecognized arguments: --test-split val")
    assert "--num-seeds (did you mean --seeds?) 3" in _bench_hints(capsys, ["--num-seeds", "3"])
    assert "--warmup-steps (did you mean --warmup?) 5" in _bench_hints(capsys, ["--warmup-steps", "5"])
    assert "--precisions (did you mean --precision?) bf16" in _bench_hints(capsys, ["--precisions", "bf16"])
    assert "--lr (did you mean --lr-grid?) 1e-3" in _bench_hints(capsys, ["--lr", "1e-3"])
    assert _bench_hints(capsys, ["--log-every", "10"]).endswith("unrecognized arguments: --log-every 10")   # a level
    assert "--dataset (did you mean --tasks?) vqa" in _bench_hints(capsys, ["--dataset", "vqa"])


def test_a_bare_dataset_name_is_a_task_unless_a_folder_of_that_name_is_here(tmp_path, monkeypatch):
    flags = ["--tasks", "--data-root"]
    monkeypatch.chdir(tmp_path)
    assert closest_flag("--data", flags, value="coco") == "--tasks"
    (tmp_path / "coco").mkdir()
    assert closest_flag("--data", flags, value="coco") == "--data-root"
    assert closest_flag("--data-dir", flags, value="vqa") == "--data-root"   # a folder's word: a folder
    assert closest_flag("--dataset", ["--task"], value="vqa") == "--task"   # (export's)
    assert closest_flag("--dataset", ["--task"], value="/data") is None


def test_a_flag_is_named_only_where_it_reads_the_value():
    flags = ["--warmup", "--precision", "--grad-clip"]
    readers = {"--warmup": int, "--grad-clip": float}
    assert closest_flag("--warmup-ratio", flags, value="0.1", readers=readers) is None
    assert closest_flag("--warmup-ratio", flags, value="0.1") == "--warmup"   # (no readers: any value)
    assert closest_flag("--warmup-steps", flags, value="10", readers=readers) == "--warmup"
    assert closest_flag("--clip-grad", flags, value="x", readers=readers) is None
    assert closest_flag("--seed", ["--seeds"], value="3") is None
    assert closest_flag("--num-seeds", ["--seeds", "--seed"], value="3") == "--seeds"


def test_a_typo_given_a_value_is_never_told_a_switch():
    flags = ["--compile", "--no-compile", "--grad-checkpointing", "--checkpoint-dir"]
    switches = ["--compile", "--no-compile", "--grad-checkpointing"]
    assert closest_flag("--checkpointing", flags, switches) == "--grad-checkpointing"
    assert closest_flag("--checkpointing", flags, switches, value="true") == "--grad-checkpointing"
    assert closest_flag("--checkpointing", flags, switches, value="100") == "--checkpoint-dir"
    assert closest_flag("--checkpointing=100", flags, switches) == "--checkpoint-dir"
    assert closest_flag("--compiles", flags, switches, value="fast") is None
    assert closest_flag("--compiles", flags, switches) == "--compile"


def test_a_flag_sharing_no_word_with_the_typo_is_named_only_for_a_very_close_spelling():
    """difflib's ratio >= 0.6 alone told ``--compile-mode x`` ``--batch-mode`` and ``--save-total-limit 3``
    ``--eval-split``: a wrong flag is worse than none. A flag is named where it shares a word with the typo (not a
    filler, not only the last word both end in where the typo names another thing), or its spelling is very close."""
    flags = ["--compile", "--batch-mode", "--batch-size", "--eval-split", "--save-every", "--temperature"]
    switches = ["--compile"]
    assert closest_flag("--compile-mode", flags, switches, value="x") is None
    assert closest_flag("--compile-mode", flags, switches) == "--compile"   # (a switch, shares "compile")
    assert closest_flag("--batch-modes", flags, switches, value="x") == "--batch-mode"
    assert closest_flag("--save-total-limit", flags, switches, value="3") is None
    assert closest_flag("--batchsize", flags, switches, value="8") == "--batch-size"   # no word shared; ratio 0.96
    assert closest_flag("--temp", flags, switches, value="0.5") == "--temperature"   # begins "temperature"
    assert closest_flag("--mode", flags, switches, value="x") == "--batch-mode"   # names nothing but "mode"


def test_a_precision_typed_as_a_switch_is_told_the_flag_that_takes_it():
    """Hugging Face Trainer's ``--bf16`` is a switch; here the precision is a value: ``--precision bf16`` where the
    command has --precision, else ``--base-dtype bf16`` (export), and the flag alone for ``--bf16 false``."""
    assert closest_flag("--bf16", ["--precision", "--base-dtype"]) == "--precision bf16"
    assert closest_flag("--fp16", ["--base-dtype", "--out"]) == "--base-dtype fp16"
    assert closest_flag("--bf16=false", ["--precision"]) == "--precision"
    assert closest_flag("--bf16", ["--out"]) is None


def test_a_value_typed_as_a_switch_is_told_the_flag_that_takes_it():
    assert closest_flag("--cpu", ["--device"]) == "--device cpu"
    assert closest_flag("--cuda", ["--device"]) == "--device cuda"
    assert closest_flag("--gpu", ["--device"], value="2") == "--device cuda:2"
    assert closest_flag("--cpu", ["--out"]) is None


def test_a_no_flag_is_named_only_for_a_typo_that_says_no():
    assert closest_flag("--zero-shot", ["--skip-zero-shot"], ["--skip-zero-shot"]) is None
    assert closest_flag("--no-zero-shot", ["--skip-zero-shot", "--no-skip-zero-shot"]) == "--skip-zero-shot"
    flags = ["--compile", "--no-compile"]
    switches = flags
    assert closest_flag("--torch-compile", flags, switches) == "--compile"   # was --no-compile
    assert closest_flag("--no-compiling", flags, switches) == "--no-compile"
    assert closest_flag("--nocompile", flags, switches) == "--no-compile"
    assert closest_flag("--disable-compile", flags, switches) == "--no-compile"
