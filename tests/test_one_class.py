"""A classification task whose training data holds one class is refused when the kind is built: it trained at a loss
of 0 from the first step and scored top-1 1.0 on a split of that class (a 2-step run on two 'cat' rows)."""

from __future__ import annotations

import dataclasses

import pytest
from vl_tiny import tiny_backbone

from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.tasks import build_kind, resolve_tasks


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def _split(labels: list[int], names: list[str]) -> Split:
    return Split([Example(image=None, image_id=f"r{i}", label=y) for i, y in enumerate(labels)], class_names=names)


def test_one_class_is_refused_naming_the_task_and_the_class(clip):
    spec = resolve_tasks("caption_cls")[0]
    with pytest.raises(ValueError, match=r"task 'caption_cls': the training data has 1 class \(\['cat'\]\); a "
                                         "classifier needs two or more"):
        build_kind(spec, _split([0, 0], ["cat"]), clip)
    one = dataclasses.replace(spec, options={**spec.options, "class_names": ["cat"]})
    with pytest.raises(ValueError, match=r"has 1 class \(\['cat'\]\)"):
        build_kind(one, Split([Example(image=None, image_id="r", label=0)]), clip)


def test_two_classes_are_fine(clip):
    kind = build_kind(resolve_tasks("caption_cls")[0], _split([0, 1], ["cat", "dog"]), clip)
    assert kind.class_names == ["cat", "dog"]
