"""A ``StopIteration`` raised while the loaders read or collate rows (a task kind's, an image source's or a collate
function's code) is refused alike with any number of workers, naming the row: PyTorch's loader takes it for the end of
the data, so ``--workers 0`` ended the pass early without a word (rows lost: here every batch), and with workers it
came out as "generator raised StopIteration". Tiny CLIP, CPU; the loaders made here are closed explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, TaskDataset, iter_image_batches
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.data.worker_errors import carry_errors, worker_errors_unwrapped
from mtl_lora_vl.tasks import build_kind, resolve_tasks

REFUSED = "raised StopIteration, which a dataset or collate function must not raise"


class _StoppingKind:
    """Wraps a kind; its ``sample_fields`` raises StopIteration on row 3 (as a ``next()`` on an empty iterator does)."""

    def __init__(self, kind):
        self.__dict__["_k"] = kind

    def __getattr__(self, name):
        return getattr(self._k, name)

    def sample_fields(self, example, index):
        if index == 3:
            next(iter(()))
        return self._k.sample_fields(example, index)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_task_kind_raising_stop_iteration_is_refused_naming_its_row(clip, workers):
    split = world.build_split("classification", "train", n=8, seed=0)
    kind = _StoppingKind(build_kind(resolve_tasks("caption_cls")[0], split, clip))
    loader = MultiTaskLoader([kind], [split], clip, batch_size=2, steps=6, num_workers=workers)
    try:
        with pytest.raises(RuntimeError) as got:
            list(loader)
    finally:
        loader.close()
    text = str(got.value)
    assert REFUSED in text and "task 'caption_cls', row 3 (example " in text and "\n" not in text, text


class _Scene:
    """An image source that renders itself, and whose rendering raises StopIteration."""

    def render(self, size=None):
        raise StopIteration


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_source_raising_stop_iteration_is_refused_naming_its_row(tmp_path, workers):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    examples = [Example(str(tmp_path / "a.png"), "a", label=0), Example(_Scene(), "scene", label=0)]

    class _Backbone:
        image_size = 16

        def preprocess_uint8(self, images, dtype):
            return images.to(dtype)

    got = []
    with pytest.raises(RuntimeError, match=f"task 'pets', reading the image of row 1 {REFUSED}"):
        got.extend(iter_image_batches(_Backbone(), examples, batch_size=1, device="cpu", task="pets",
                                      num_workers=workers))
    assert len(got) == 1


class _Rows(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise StopIteration
        return torch.tensor(index)


def _collate_stops(rows):
    if any(int(r) == 1 for r in rows):
        raise StopIteration
    return torch.stack(rows)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", ["dataset", "collate"])
def test_any_dataset_or_collate_given_to_carry_errors_refuses_stop_iteration(where, workers):
    """Rows 0 and 1 came out and then nothing, with no error (``--workers 0``)."""
    dataset, collate = carry_errors(_Rows(), _collate_stops if where == "collate" else torch.stack)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate, num_workers=workers)
    says = "the collate function" if where == "collate" else "the dataset, reading rows [2]"
    rows = []
    with pytest.raises(RuntimeError, match=f"{says} {REFUSED}".replace("[", r"\[").replace("]", r"\]")):
        rows.extend(int(b) for b in worker_errors_unwrapped(loader))
    assert rows == ([0] if where == "collate" else [0, 1])


class _StoppingElsewhere(_StoppingKind):
    """Its ``sample_fields`` raises StopIteration on every row but 3."""

    def sample_fields(self, example, index):
        if index != 3:
            next(iter(()))
        return self._k.sample_fields(example, index)


def test_the_refusal_names_the_row_read_in_place_of_one_whose_image_fails(clip, tmp_path):
    """Row 3's image is missing, so another row is read in its place; that row raised, not row 3 (the message
    named row 3 and its broken example)."""
    split = world.build_split("classification", "train", n=8, seed=0)
    examples = list(split.examples)
    examples[3] = Example(str(tmp_path / "missing.png"), "broken", label=0)
    kind = _StoppingElsewhere(build_kind(resolve_tasks("caption_cls")[0], split, clip))
    dataset = TaskDataset(kind, Split(examples, class_names=split.class_names), clip.image_size)
    with pytest.raises(RuntimeError) as got:
        dataset[3]
    text = str(got.value)
    assert REFUSED in text and ", in place of row 3)" in text and "'broken'" not in text, text
