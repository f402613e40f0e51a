"""Second look at ``hf_loading.held_logs`` (``datasets``' parquet builder's ERROR line held back while parquet files are
read): the handlers attached to the held logger itself (not its parents') went on seeing its records while held,
so a record was shown there during the hold and again when let out, and seen there though the read ended in our
refusal."""

from __future__ import annotations

import logging

import pytest

from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.hf_table import held_logs


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def own():
    """A logger with a handler of its own (as a user's logging config may attach to datasets' loggers), removed
    after."""
    log, seen = logging.getLogger("mtl_test.held_review"), _Seen()
    log.addHandler(seen)
    yield log, seen
    log.removeHandler(seen)


def test_the_held_loggers_own_handlers_see_a_record_once_after_the_hold(own):
    log, seen = own
    with pytest.raises(ValueError), held_logs(log.name):
        log.error("one")
        assert seen.messages == []   # (was: ["one"], held from the parents only)
        raise ValueError("not ours")
    assert seen.messages == ["one"]   # (was: ["one", "one"])
    assert log.handlers == [seen] and log.propagate


def test_the_held_loggers_own_handlers_see_nothing_where_the_read_ends_in_our_refusal(own):
    log, seen = own
    with pytest.raises(DataFormatError), held_logs(log.name):
        log.error("two")
        raise DataFormatError("ours")
    assert seen.messages == [] and log.handlers == [seen]
