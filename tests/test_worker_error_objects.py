"""A loader worker sends the error it raised itself, pickled (``carry_errors``): with 2 workers the main process
raises what ``--workers 0`` raises -- its type, arguments and attributes, where PyTorch's re-raise keeps only the
traceback's text -- with the worker's traceback (its causes included) as the cause; an error that does not pickle is
made back from that text as before."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mtl_lora_vl.cli.commands import train_main
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example
from mtl_lora_vl.data.worker_errors import WorkerTraceback, carry_errors, worker_errors_unwrapped


class _RowError(ValueError):
    """An error whose ``__init__`` needs two arguments (its own pickle calls it with the message alone)."""

    def __init__(self, row: int, why: str) -> None:
        super().__init__(f"row {row}: {why}")
        self.row, self.why = row, why


class _Rows(Dataset):
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2 and self.error is not None:
            raise self.error
        return torch.tensor(index)


def _collate_fails(rows: list[torch.Tensor]) -> torch.Tensor:
    if any(int(r) == 2 for r in rows):
        raise _RowError(2, "cannot collate")
    return torch.stack(rows)


def _raised(error: BaseException | None, workers: int, collate=torch.stack) -> BaseException:
    dataset, collate_fn = carry_errors(_Rows(error), collate)
    with pytest.raises(Exception) as got:
        list(worker_errors_unwrapped(DataLoader(dataset, batch_size=1, collate_fn=collate_fn, num_workers=workers)))
    return got.value


def _fields(e: BaseException) -> tuple:
    return type(e), e.args, str(e), dict(vars(e))


def _chain(e: BaseException) -> list[str]:
    """The names of the errors ``e`` was raised from, innermost last."""
    names = []
    while (e := e.__cause__ or e.__context__) is not None:
        names.append(f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins."))
    return names


@pytest.fixture()
def bad_image(tmp_path: Path) -> list[Example]:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    return [Example(str(tmp_path / n), n, label=0) for n in ("good.png", "good.png", "bad.png", "good.png")]


class _Backbone:
    image_size = 16

    def preprocess_uint8(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return images.to(dtype) / 255


def test_a_strict_image_error_from_two_workers_is_the_one_zero_workers_raises(bad_image):
    """Its fields as with 0 workers, and its cause the worker's traceback naming the decoder's error: made back from
    PyTorch's text, an ImageError had no cause (--log-level debug showed nothing of PIL's UnidentifiedImageError)."""
    got = {}
    for workers in (0, 2):
        with pytest.raises(ImageError) as e:
            list(iter_image_batches(_Backbone(), bad_image, batch_size=1, device="cpu", strict=True, task="pets",
                                    num_workers=workers))
        got[workers] = e.value
    assert _fields(got[2]) == _fields(got[0]) and "bad.png" in str(got[0])
    cause = got[2].__cause__
    assert isinstance(cause, WorkerTraceback) and "in DataLoader worker process" in str(cause)
    assert _chain(got[0]) and all(name in str(cause) for name in _chain(got[0])), (_chain(got[0]), str(cause))


@pytest.mark.parametrize("where", ["dataset", "collate"])
def test_an_error_with_a_required_init_argument_keeps_its_type_and_attributes(where):
    """PyTorch made it again from its text (``_RowError(text)``: a TypeError) and raised a RuntimeError holding the
    whole traceback instead."""
    args = (None, _collate_fails) if where == "collate" else (_RowError(2, "bad row"), torch.stack)
    got = [_raised(args[0], workers, args[1]) for workers in (0, 2)]
    assert _fields(got[1]) == _fields(got[0])
    assert type(got[1]) is _RowError and got[1].row == 2 and got[1].why in ("bad row", "cannot collate")
    assert isinstance(got[1].__cause__, WorkerTraceback) and "_RowError" in str(got[1].__cause__)


def test_attributes_and_notes_of_a_picklable_error_come_through():
    error = KeyError("cat")
    error.row = 7
    error.add_note("row 7 of rows.jsonl")
    got = [_raised(error, workers) for workers in (0, 2)]
    assert _fields(got[1]) == _fields(got[0]) and got[1].row == 7 and got[1].__notes__ == ["row 7 of rows.jsonl"]


def test_an_error_that_does_not_pickle_is_made_back_from_its_text():
    """An attribute that cannot be pickled (a lock): the worker raises it and its type and message are read back
    from PyTorch's text, as before."""
    error = ValueError("task 'vqa': a bad row")
    error.lock = threading.Lock()
    got = _raised(error, 2)
    assert type(got) is ValueError and str(got) == "task 'vqa': a bad row" and not hasattr(got, "lock")
    assert isinstance(got.__cause__, WorkerTraceback) and "Caught ValueError" in str(got.__cause__)


def test_the_trainers_error_line_is_the_one_of_zero_workers(tmp_path, bad_image, capsys):
    """A strict spec with an unreadable image: the one-line ``error:`` is the same with 2 workers as with 0, and
    at --log-level debug the traceback names the decoder's error, as with 0 workers."""
    root = tmp_path
    rows = [{"image": Path(ex.image).name, "label": i % 2} for i, ex in enumerate(bad_image * 2)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "pets.toml"
    spec.write_text('kind = "classification"\n[data]\nformat = "jsonl"\nstrict = true\nverify = false\n'
                    '[data.train]\nfile = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n')
    err = {}
    for workers in (0, 2):
        assert train_main(["--tasks", str(spec), "--data-root", str(root), "--steps", "2", "--batch-size", "4",
                           "--workers", str(workers), "--device", "cpu", "--out", str(tmp_path / f"run{workers}"),
                           "--log-level", "debug"]) == 2
        err[workers] = capsys.readouterr().err
    line = {w: [x for x in text.splitlines() if "error: " in x] for w, text in err.items()}
    assert line[2] == line[0] and len(line[0]) == 1 and "bad.png" in line[0][0], line
    for text in err.values():   # the debug traceback, after the error line
        assert "PIL.UnidentifiedImageError: cannot identify image file" in text.partition(line[0][0])[2]


def test_an_error_of_a_type_that_does_not_pickle_comes_out_instead_of_a_hang():
    """An error class defined inside a function cannot be pickled, not even by its type (PyTorch's own sending): the
    worker's queue failed and the main process waited forever (here: the loader's 20 s timeout). It comes out as a
    RuntimeError naming the type and the message, the worker's traceback its cause."""
    class Local(ValueError):
        pass

    dataset, collate_fn = carry_errors(_Rows(Local("row 2: bad")), torch.stack)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_fn, num_workers=2, timeout=20)
    with pytest.raises(RuntimeError) as got:
        list(worker_errors_unwrapped(loader))
    assert "Local: row 2: bad" in str(got.value) and "cannot be pickled" in str(got.value)
    assert isinstance(got.value.__cause__, WorkerTraceback) and "Local: row 2: bad" in str(got.value.__cause__)


@pytest.mark.parametrize("error", [ValueError("row 2: bad"), _RowError(2, "bad")])   # made back from text; carried
def test_a_loader_with_persistent_workers_raises_the_error_again_in_its_next_epoch(error):
    """The error stopped the iterator's workers, which a persistent loader kept: its next epoch read the closed
    queues ("Queue ... is closed") instead of its rows."""
    dataset, collate_fn = carry_errors(_Rows(error), torch.stack)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_fn, num_workers=2, persistent_workers=True)
    for _ in range(2):
        rows = []
        with pytest.raises(type(error), match="row 2: bad"):
            rows.extend(int(b) for b in worker_errors_unwrapped(loader))
        assert rows == [0, 1]
