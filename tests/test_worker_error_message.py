"""An error a loader worker raises comes out as with ``--workers 0``: its own type and one-line message (the command
line prints it as its error), with the worker's traceback as its cause -- not PyTorch's "Caught ValueError in
DataLoader worker process 0." plus the whole traceback as the message."""

from __future__ import annotations

import errno

import pytest
from torch.utils.data import DataLoader, Dataset

from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.data.common import DataFormatError
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.worker_errors import WorkerTraceback, worker_errors_unwrapped


class _Rows(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise self.error
        return index


@pytest.mark.parametrize("error", [DataFormatError("rows.jsonl:3: label 'x' is not a class; fix the row"),
                                   ValueError("task 'vqa': a bad row"), RuntimeError("task 'vqa': cannot tokenise")])
def test_a_worker_error_keeps_its_type_and_message_and_the_traceback_as_cause(error):
    for workers in (0, 1):
        loader = DataLoader(_Rows(error), batch_size=1, num_workers=workers)
        with pytest.raises(type(error)) as got:
            list(worker_errors_unwrapped(loader))
        assert str(got.value) == str(error)
        if workers:
            assert isinstance(got.value.__cause__, WorkerTraceback) and "__getitem__" in str(got.value.__cause__)


def _read_all(loader: DataLoader) -> None:
    list(worker_errors_unwrapped(loader))


def test_an_image_error_from_a_worker_keeps_its_one_line_message_and_the_traceback_as_cause(capsys, monkeypatch):
    """Made back from PyTorch's text, an ImageError was raised ``from None`` while one carried whole (carry_errors)
    had the worker's traceback as its cause: ``--log-level debug`` showed the worker's traceback for the one and not
    the other. Both have it now; the command line's ``error:`` is the message alone either way (one line), the
    traceback only at debug."""
    message = "image a.jpg: file is empty (0 bytes)"
    loader = DataLoader(_Rows(ImageError(message)), batch_size=1, num_workers=1)
    with pytest.raises(ImageError) as got:
        list(worker_errors_unwrapped(loader))
    assert str(got.value) == message
    assert isinstance(got.value.__cause__, WorkerTraceback) and "__getitem__" in str(got.value.__cause__)
    monkeypatch.delenv("MTL_LORA_VL_DEBUG", raising=False)
    for level in ("info", "debug"):
        assert run_command(level, _read_all, DataLoader(_Rows(ImageError(message)), batch_size=1, num_workers=1)) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("[mtl-lora-vl] error")]
        assert lines == [f"[mtl-lora-vl] error: {message}"], err
        assert ("in DataLoader worker process 0" in err and "WorkerTraceback" in err) == (level == "debug"), err


@pytest.mark.parametrize("error", [KeyError("cat"), KeyError(3),
                                   FileNotFoundError(errno.ENOENT, "No such file or directory", "a.png")])
def test_a_worker_error_made_from_more_than_its_text_reads_as_with_no_workers(error):
    """A KeyError's text is its key's repr: made from the text it read "'cat'" with its quotes twice (``--workers 0``:
    'cat'); an OSError lost its errno and file name."""
    got = []
    for workers in (0, 1):
        with pytest.raises(type(error)) as caught:
            list(worker_errors_unwrapped(DataLoader(_Rows(error), batch_size=1, num_workers=workers)))
        got.append((str(caught.value), caught.value.args, getattr(caught.value, "filename", None)))
    assert got[1] == got[0] == (str(error), error.args, getattr(error, "filename", None))
