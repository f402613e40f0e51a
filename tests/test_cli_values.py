"""Review 189: an optional path flag keeps a value the YAML loader read as null ("null", "#run1", "&x" became the
default: --out null wrote to runs/..., --resume null started a fresh run); "config": null in a config file names no
file (it was refused as naming another one); bench --out=~/x expands ~ (it made a folder named '~')."""

from __future__ import annotations

import json

import pytest

from mtl_lora_vl.cli.parsing import parse_options
from mtl_lora_vl.options import EvalOptions, TrainOptions


def _parse(cls, argv):
    return parse_options(cls, argv, "p", "d")[0]


# 1. Path options: a value the YAML loader reads as null (null / Null / NULL, "#..." = a comment, "&..." = an
#    anchor) silently became None = the option's default (the same bug _bare_home fixed for "~").
@pytest.mark.parametrize("value", ["null", "NULL", "#run1", "&x"])
def test_out_value_is_kept_verbatim(value):
    assert _parse(TrainOptions, ["--out", value]).out == value


def test_resume_null_is_not_a_fresh_run():
    # --resume null started a new run in runs/<tasks>-<method>-<time> instead of resuming / refusing
    assert _parse(TrainOptions, ["--resume", "null"]).resume == "null"


def test_eval_adapter_null_is_not_reported_missing():
    # `eval --adapter null` said "--adapter is required" although it was given
    assert _parse(EvalOptions, ["--adapter", "null"]).adapter == "null"


def test_config_string_null_is_a_string(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"out": "null"}))   # a JSON *string*, not null
    assert _parse(TrainOptions, ["--config", str(cfg)]).out == "null"


# 2. "config": null in a config file names no other file, but was refused with
#    "config = null: a config file cannot name another one; merge the two files".
def test_config_key_null_is_accepted(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"rank": 4, "config": None}))
    opts = _parse(TrainOptions, ["--config", str(cfg)])
    assert opts.rank == 4


# 3. bench --out=~/x (the shell leaves ~ alone after '=') wrote into a folder literally named "~" in the
#    working directory; train/eval/export expand it (parsing._bare_home / _expand_home).
def test_bench_out_tilde_is_home(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    import mtl_lora_vl.benchmark.bench as bench
    from mtl_lora_vl.benchmark import main

    monkeypatch.setattr(bench, "_run_grid", lambda *a, **k: {"failed": []})   # no training: just the folder checks
    assert main(["--out=~/bench", "--quick", "--device", "cpu", "--no-single"]) == 0
    assert not (cwd / "~").exists()
    assert (home / "bench" / "settings.json").is_file()


# 4. A list in a config file is a comma-separated list only for the options that take one (tasks, export's task):
#    out = ["a", "b"] made a run directory named "a,b", data_root = ["/d1", "/d2"] the folder "/d1,/d2" (review 225).
@pytest.mark.parametrize("key, value", [("out", ["a", "b"]), ("data_root", ["d1", "d2"]), ("backbone", ["builtin"])])
def test_a_list_is_refused_for_a_single_value_option(tmp_path, capsys, key, value):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({key: value}))
    with pytest.raises(SystemExit):
        _parse(TrainOptions, ["--config", str(cfg)])
    assert f"{key} = {json.dumps(value)} is not allowed; {key} takes a string" in capsys.readouterr().err


def test_a_list_of_tasks_is_still_joined(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('tasks = ["vqa", "retrieval"]\n')
    assert _parse(TrainOptions, ["--config", str(cfg)]).tasks == "vqa,retrieval"
    assert _parse(EvalOptions, ["--config", str(cfg), "--adapter", "a"]).tasks == "vqa,retrieval"


# 5. A bad value of an `X | None` option (--steps, --epochs, --image-max-pixels, --image-reading) is named as given,
#    without jsonargparse's dump: "--steps 1e2" said "got 100.0 - Expected a <class 'NoneType'>. Got value: 100.0 Given
#    value type: <class 'str'> Given value: 1e2", and an empty value "(Does not validate against any of the Union
#    subtypes Subtypes: [...] Errors: ...)" (review 225).
@pytest.mark.parametrize("argv, said", [
    (["--steps", "1e2"], "--steps: expected an integer >= 1 (or leave it out), got 1e2\n"),
    (["--steps", "true"], "--steps: expected an integer >= 1 (or leave it out), got true\n"),
    (["--image-max-pixels", "1e6"], "--image-max-pixels: expected an integer >= 1 (or leave it out), got 1e6\n"),
    (["--steps", ""], "--steps: expected an integer >= 1 (or leave it out), got an empty value\n"),
    (["--image-reading", ""], 'expected one of "native", "square" (or leave it out), got an empty value\n'),
    (["--lr", ""], "--lr: expected a number > 0, got an empty value\n"),
    (["--steps", "abc"], "--steps: expected an integer >= 1 (or leave it out), got abc\n"),
])
def test_a_bad_value_is_named_as_given(argv, said, capsys):
    with pytest.raises(SystemExit):
        _parse(TrainOptions, argv)
    err = capsys.readouterr().err
    assert said in err and "<class" not in err, err
