"""What a command prints for the package's Python warnings, and third parties' (console output)."""

import logging
import warnings

import pytest

from mtl_lora_vl.cli.commands import parse_train_args
from mtl_lora_vl.log import cli_logging, warn_user


def test_package_warnings_print_as_prefixed_lines_in_a_command(capsys, monkeypatch):
    """`train_vl.py --rank 300` printed 'scripts/train_vl.py:21: UserWarning: attach: r = 300 ...' and the
    script's `sys.exit(train_main(...))` line under it: the warning pointed at the user's script, not a log line."""
    shown = []   # what Python's own display received (a third party's warnings keep it)
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *a, **k: shown.append((category, message)))
    saved = warnings.showwarning
    with cli_logging("info"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warn_user("attach: r = 300 (--rank) is above the widths")
        warnings.warn("a third party's deprecation", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "[mtl-lora-vl] warning: attach: r = 300 (--rank) is above the widths" in err.splitlines()
    assert "UserWarning" not in err and "warn_user(" not in err and "deprecation" not in err
    assert [(c, str(m)) for c, m in shown] == [(DeprecationWarning, "a third party's deprecation")]
    assert warnings.showwarning is saved   # put back


def test_package_warnings_stay_python_warnings_for_library_users():
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warn_user("careful", FutureWarning)
    [w] = said
    assert w.category is FutureWarning and str(w.message) == "careful" and w.filename == __file__
    with cli_logging("info"), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # -W ignore / PYTHONWARNINGS still silence them
        warn_user("hidden")


def test_the_training_bar_writes_whole_prefixed_lines_to_a_log_file(capsys):
    """Piped to a file (CI logs), the bar was one line of '\\r'-separated states, redrawn at every set_postfix
    (each --log-every) whatever the 15 s interval; a log line printed meanwhile followed the bar on its line."""
    import logging

    from mtl_lora_vl.training.metrics_log import progress_bar

    with cli_logging("info"):
        bar = progress_bar(True, 0, 20)
        for step in range(1, 21):
            bar.update(1)
            if step % 5 == 0:
                bar.set_postfix(loss=f"{3 - step / 10:.3f}")
            if step == 12:
                logging.getLogger("mtl_lora_vl.training").warning("stopping after this step")
        bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "█" not in err
    lines = err.splitlines()
    assert lines[0].startswith("[mtl-lora-vl] train:   0% 0/20 [")
    assert lines[1] == "[mtl-lora-vl] warning: stopping after this step"
    assert lines[2].startswith("[mtl-lora-vl] train: 100% 20/20 [") and lines[2].endswith("loss=1.000]")
    assert len(lines) == 3   # no line per set_postfix: one per 15 s at most, and the last


def test_export_result_lines_do_not_continue_the_progress_bar_line(monkeypatch):
    """On a terminal, `export --task vqa,retrieval` printed 'export:   0%|   | 0/2 [00:00<?, ?task/s]wrote
    OUT/vqa (task 'vqa' merged into CLIP)': the result line was printed on the bar's line."""
    import io
    import sys
    import types

    from mtl_lora_vl.cli import export_tasks as export_cli
    from mtl_lora_vl.log import progress

    screen = io.StringIO()   # one terminal for both streams
    screen.isatty = lambda: True
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(export_cli, "save_merged", lambda model, task, target, **kw: target)
    opts = types.SimpleNamespace(format="merged", overwrite=False)
    for task in progress(["vqa", "retrieval"], desc="export", unit="task", mininterval=0):
        export_cli._export_one(opts, object(), task, f"OUT/{task}", None)
    wrote = [line.split("\r")[-1] for line in screen.getvalue().split("\n") if "wrote" in line]
    assert wrote == ["wrote OUT/vqa (task 'vqa' merged into object)",
                     "wrote OUT/retrieval (task 'retrieval' merged into object)"]


def test_bench_errors_are_prefixed_like_the_other_commands(tmp_path, capsys):
    """`mtl-lora-vl bench --tasks nope` printed 'error: unknown task ...' where train, eval and export print
    '[mtl-lora-vl] error: ...'."""
    from mtl_lora_vl.cli import main

    assert main(["bench", "--tasks", "nope", "--out", str(tmp_path / "b")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("[mtl-lora-vl] error: unknown task 'nope'")


def test_the_training_bar_prints_no_extra_line_from_tqdm_monitor_after_a_pause(capsys, monkeypatch):
    """A 12 s pause (validation) after the bar's 15 s line: tqdm's monitor thread, which wakes every 10 s, drew a
    line from its own thread in the pause (n unchanged), and the next update drew another one ~1 s later."""
    import time

    from tqdm import TMonitor

    from mtl_lora_vl.log import line_bar

    bar = line_bar(desc="train", total=100, unit="step")   # a line at most every 15 s
    clock = [bar.last_print_t]
    bar._time = lambda: clock[0]
    for _ in range(20):   # 1 step/s: the line at step 15 (tqdm then awaits 15 steps before looking at the time)
        clock[0] += 1.0
        bar.update(1)
    clock[0] += 12.0   # the pause; the monitor wakes in it
    monkeypatch.setitem(TMonitor._test, "time", lambda: clock[0])
    monitor = TMonitor(type(bar), 0.01)
    time.sleep(0.2)
    monitor.exit()
    for _ in range(20):
        clock[0] += 1.0
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    steps = [line.split("% ")[1].split(" ")[0] for line in lines]
    assert steps == ["0/100", "15/100", "21/100", "36/100", "40/100"]   # 15 s apart or more, and the last


def test_a_command_in_catch_warnings_record_still_records_the_package_warnings(capsys):
    """A library user's `catch_warnings(record=True)` (or `pytest.warns`) around `train_main(...)` got none of the
    package's warnings (the command printed them instead); a third party's were recorded."""
    import pytest

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with cli_logging("info"):
            warn_user("attach: r = 300 (--rank) is above the widths")
            warnings.warn("a third party's deprecation", DeprecationWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in said] == [
        (UserWarning, "attach: r = 300 (--rank) is above the widths"),
        (DeprecationWarning, "a third party's deprecation")]
    assert said[0].filename == __file__   # the user's line, as outside a command
    with pytest.warns(FutureWarning, match="careful"), cli_logging("info"):
        warn_user("careful", FutureWarning)
    err = capsys.readouterr().err.splitlines()   # the command's lines are still printed
    assert "[mtl-lora-vl] warning: attach: r = 300 (--rank) is above the widths" in err
    assert "[mtl-lora-vl] warning: careful" in err


def test_a_command_hook_left_installed_after_the_command_passes_warnings_on(monkeypatch):
    """A library that calls `logging.captureWarnings(True)` during a command, and `(False)` after it, puts the
    command's hook back for good: the package's warnings then went to the package logger, not the user's hook."""
    import logging

    seen = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: seen.append(str(message)))
    with cli_logging("info"):
        logging.captureWarnings(True)
    logging.captureWarnings(False)   # the command's hook is back in place
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warn_user("after the command")
    assert seen == ["after the command"]


def test_log_level_error_hides_the_package_warnings_not_third_parties(capsys, monkeypatch):
    """README / --help: `--log-level error` hides the package's warnings (logged ones and warn_user's lines);
    another library's Python warnings still print (helper 367)."""
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *a, **k: shown.append(str(message)))
    with cli_logging("error"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warn_user("attach: r = 300 (--rank) is above the widths")
        logging.getLogger("mtl_lora_vl.training").warning("a logged warning")
        logging.getLogger("mtl_lora_vl.training").error("an error")
        warnings.warn("a third party's deprecation", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().err.splitlines() == ["[mtl-lora-vl] error: an error"]
    assert shown == ["a third party's deprecation"]
    with pytest.raises(SystemExit):
        parse_train_args(["--help"], prog="train_vl.py")
    assert "error also hides the package's warnings" in " ".join(capsys.readouterr().out.split())
