"""The line a stop signal makes: said once per process, however many signals follow the first."""

from __future__ import annotations

import logging
import signal

import pytest

from mtl_lora_vl import signal_handlers
from mtl_lora_vl.training.stopping import StopRequest, stop_at_step_boundary


def test_a_repeated_sigterm_says_stopping_once(caplog):
    """A rank whose torchrun agent was killed got SIGTERM twice and printed its stop line twice (4 lines from 2
    ranks, in 2 of 3 launches); the second signal still stops it (no KeyboardInterrupt: only a second Ctrl-C)."""
    stop = StopRequest()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        stop(signal.SIGTERM, None)
        stop(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    assert [r.getMessage().count("stopping after this step") for r in caplog.records] == [1]
    with pytest.raises(KeyboardInterrupt):   # Ctrl-C after it: at once
        stop(signal.SIGINT, None)


def test_each_rank_names_itself_in_its_stop_line(caplog, monkeypatch):
    """Under torchrun each rank says the signal it got with its rank (N identical lines said neither whose nor how
    many); one process alone says it as before."""
    for env, start in (({"RANK": "1", "WORLD_SIZE": "2"}, "rank 1: SIGTERM"), ({}, "SIGTERM")):
        caplog.clear()
        with monkeypatch.context() as mp:
            for k in ("RANK", "WORLD_SIZE"):
                mp.delenv(k, raising=False)
            for k, v in env.items():
                mp.setenv(k, v)
            with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
                StopRequest()(signal.SIGTERM, None)
        assert [r.getMessage().split(": stopping")[0] for r in caplog.records] == [start]


@pytest.mark.parametrize("signum, says", [(signal.SIGINT, "SIGINT: stopping after this step (Ctrl-C again to stop at "
                                                          "once, without saving)"),
                                          (signal.SIGTERM, "SIGTERM: stopping after this step (Ctrl-C or kill -INT "
                                                           "to stop at once, without saving)")])
def test_the_stop_line_says_what_stops_at_once_in_the_words_of_the_signal(caplog, monkeypatch, signum, says):
    """A SIGTERM (a scheduler's, kill's) was told "Ctrl-C again", as if a Ctrl-C had come; what stops the run at once
    after either is a SIGINT, which is what the line names (a second SIGTERM stops at the step too)."""
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    stop = StopRequest()
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        stop(signum, None)
    assert [r.getMessage() for r in caplog.records] == [says]
    stop(signal.SIGTERM, None)   # (no KeyboardInterrupt: a SIGTERM does not stop it at once)
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_an_error_leaves_the_loop_is_noted_without_the_stop_line(caplog, monkeypatch, signum):
    """Helper 534: a signal that came while an error left the loop (its handlers being put back) printed "stopping
    after this step", though no step was coming and the error was what the command reported. It is noted (the first
    signal) without a line; the error goes on."""
    real_put_back = signal_handlers._put_back

    def put_back(old):   # the signal as the loop's handlers are put back, the error on its way out
        signal.raise_signal(signum)
        real_put_back(old)

    monkeypatch.setattr(signal_handlers, "_put_back", put_back)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"), pytest.raises(OSError, match="disk full"):
        with stop_at_step_boundary() as stop:
            raise OSError("disk full")
    assert stop.signum == signum
    assert caplog.records == []
