"""`bench --config FILE` (helper 491): train, eval and export took a JSON / TOML file of options, bench answered
"unrecognized arguments: --config" with no hint. Its file gets the checks its flags get (an unknown key with a
did-you-mean, a wrong type named with what the key takes) and the command line wins over it."""

from __future__ import annotations

import json

import pytest

import mtl_lora_vl.benchmark.command as command_module
from mtl_lora_vl.benchmark.cli import main
from mtl_lora_vl.benchmark.grid import BenchSettings
from mtl_lora_vl.cli.main import main as mtl_main

GRID = """steps = 7
seeds = 1
lr-grid = [1e-3, 3e-3]
tasks = ["vqa", "retrieval"]
methods = ["lora", "mtl_lora"]
no_single = true
precision = "fp32"
threads = 1

[ablate]
rank = [4, 16]
lambda_type = ["none"]
"""


class _Reached(Exception):
    """What run_benchmark was given: the grid's settings and folder (the grid itself is never run)."""


def _settings(monkeypatch, argv: list[str], entry=main):
    def reached(settings, out, **kwargs):
        raise _Reached(settings, out, kwargs)

    monkeypatch.setattr(command_module, "run_benchmark", reached)
    with pytest.raises(_Reached) as e:
        entry(argv)
    return e.value.args


def test_a_toml_file_sets_the_grid_and_the_command_line_wins(tmp_path, monkeypatch):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(f"out = {json.dumps(str(tmp_path / 'grid'))}\n" + GRID)
    s, out, kwargs = _settings(monkeypatch, ["--config", str(cfg)])
    assert (s.steps, s.seeds, s.lr_grid, s.tasks, s.methods) == (7, 1, [1e-3, 3e-3], ["vqa", "retrieval"],
                                                                 ["lora", "mtl_lora"])
    assert (s.single_task, s.match_params, s.precision) == (False, True, "fp32")
    assert s.ablations == {"rank": [4, 16], "lambda_type": ["none"]}
    assert out == str(tmp_path / "grid")
    assert kwargs == {"overwrite": False, "retry_failed": False, "pretrained_as": "--pretrained"}
    # a flag wins over the file's key; --ablate replaces the file's ablations (it was appended to them)
    s, *_ = _settings(monkeypatch, ["--config", str(cfg), "--steps", "9", "--ablate", "n_up=2"])
    assert (s.steps, s.seeds, s.ablations) == (9, 1, {"n_up": [2]})
    s, *_ = _settings(monkeypatch, ["--steps=9", "--config", str(cfg), "--no-ablations"])   # (the file's ablate with
    assert (s.steps, s.ablations) == (9, {})   # --no-ablations contradicted each other)
    # through `mtl-lora-vl bench` too
    s, *_ = _settings(monkeypatch, ["bench", "--config", str(cfg)], entry=mtl_main)
    assert s.steps == 7


def test_a_json_file_takes_the_same_keys(tmp_path, monkeypatch):
    cfg = tmp_path / "grid.json"
    cfg.write_text(json.dumps({"out": str(tmp_path / "g"), "steps": 5, "lr_grid": "1e-3", "no-matched": True,
                               "ablate": ["temperature=0.5,2"], "methods": "mtl_lora", "pretrained": None}))
    s, out, _ = _settings(monkeypatch, ["--config", str(cfg)])
    assert (s.steps, s.lr_grid, s.match_params, s.methods) == (5, [1e-3], False, ["mtl_lora"])
    assert s.ablations == {"temperature": [0.5, 2.0]} and s.pretrained is None


@pytest.mark.parametrize(("text", "says"), [
    ("seed = 3", "unknown option 'seed' (did you mean 'seeds'?); the keys are the long flag names without the dashes"),
    ('steps = "4"', 'steps = "4" is a string (in quotes); steps takes an integer: write steps = 4, without the quotes'),
    ("steps = 2.5", "steps = 2.5 is not allowed; steps takes an integer"),
    ("steps = true", "steps = true is not allowed; steps takes an integer"),
    ('precision = "fp8"', """precision = "fp8" is not allowed; precision takes one of ['auto', 'fp32',"""),
    ("quick = 1", "quick = 1 is not allowed; quick takes true or false"),
    ('lr_grid = ["1e-3"]', 'lr_grid = ["1e-3"] is not allowed; lr_grid takes a list of numbers'),
    ('lr_grid = "1e-3,x"', "is not a comma-separated list of numbers"),
    ("tasks = 3", "tasks = 3 is not allowed; tasks takes a list of strings or a comma-separated string"),
    ("[ablate]\nrank = [0]", "(rank=0: '0' is not an integer >= 1)"),
    ('[ablate]\nrank = ["4"]', '"4" is not an integer >= 1; numbers are written without quotes'),
    ("[ablate]\nranks = [4]", "write OPTION=V1,V2 with OPTION one of"),
    ("ablate = []", "ablate = [] is not allowed (it names no ablation; no_ablations = true runs none)"),
    ('config = "other.toml"', "a config file cannot name another one"),
    ("verbose = true", "unknown option 'verbose'"),
])
def test_a_bad_key_is_refused_naming_the_file_the_key_and_what_it_takes(text, says, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(text + "\n")
    monkeypatch.setattr(command_module, "run_benchmark", _Reached)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--out", str(tmp_path / "b")], prog="mtl-lora-vl bench")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"mtl-lora-vl bench: error: --config {cfg}: " in err and says in err, err
    assert not (tmp_path / "b").exists()


def test_config_is_one_file_and_not_empty(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text("steps = 3\n")
    monkeypatch.setattr(command_module, "run_benchmark", _Reached)
    for argv, says in ((["--config", str(cfg), "--config", str(cfg)], "--config is given 2 times; give one file"),
                       (["--config", ""], "--config '': an empty value (an unset shell variable?)"),
                       (["--config", str(tmp_path / "no.toml")], "no.toml: no such file"),
                       (["--config", str(tmp_path)], "is a folder, not a file"),
                       (["--confg", str(cfg)], "--confg (did you mean --config?)")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err, err


def test_a_files_switch_is_turned_off_on_the_command_line(tmp_path, monkeypatch):
    """bench's switches had no off flag, so a file's ``quick = true`` (or ``no_single = true``, ``overwrite``,
    ``retry_failed``) held whatever the command line said: ``--no-quick``, ``--single``, ... now win over it."""
    cfg = tmp_path / "grid.toml"
    cfg.write_text(f"out = {json.dumps(str(tmp_path / 'grid'))}\nquick = true\nno_single = true\nno_matched = true\n"
                   "no_ablations = true\noverwrite = true\nretry_failed = true\nthreads = 1\n")
    s, _, kwargs = _settings(monkeypatch, ["--config", str(cfg)])
    assert (s.steps, s.single_task, s.match_params, s.ablations) == (30, False, False, {})   # --quick's 30 steps
    assert kwargs == {"overwrite": True, "retry_failed": True, "pretrained_as": "--pretrained"}
    s, _, kwargs = _settings(monkeypatch, ["--config", str(cfg), "--no-quick", "--single", "--matched", "--ablations",
                                           "--no-overwrite", "--no-retry-failed"])
    full = BenchSettings()
    assert (s.steps, s.seeds, s.single_task, s.match_params) == (full.steps, full.seeds, True, True)
    assert s.ablations == full.ablations   # --ablations: the default ablations, not none
    assert kwargs == {"overwrite": False, "retry_failed": False, "pretrained_as": "--pretrained"}
    # the file's ablate stays where --ablations only undoes no_ablations; --quick on the command line still wins
    cfg.write_text(f"out = {json.dumps(str(tmp_path / 'grid'))}\nthreads = 1\nquick = false\n[ablate]\nrank = [4]\n")
    s, *_ = _settings(monkeypatch, ["--config", str(cfg), "--ablations", "--quick"])
    assert (s.steps, s.ablations) == (30, {"rank": [4]})


def test_the_off_flags_are_no_file_keys_and_get_hints(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text("single = true\n")
    with pytest.raises(SystemExit):
        main(["--config", str(cfg)])
    assert "unknown option 'single'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--no-quik"])
    assert "--no-quik (did you mean --no-quick?)" in capsys.readouterr().err
