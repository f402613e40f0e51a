"""``Example`` is a frozen dataclass whose sequence fields are tuples: lists given for them (a user's own reader, a
JSON row) are kept as tuples, so that the example stays hashable and unchanged, and a list of images is several."""

from __future__ import annotations

from mtl_lora_vl.data.records import Example, Split, image_count


def test_lists_given_for_answers_captions_and_images_are_kept_as_tuples():
    ex = Example(["left.png", "right.png"], "p", text="q", captions=["a cat", "a dog"], answers=["red", "red", "blue"])
    assert ex.answers == ("red", "red", "blue") and ex.captions == ("a cat", "a dog")
    assert ex.image == ("left.png", "right.png") and image_count(ex) == 2   # a list was read as one image
    assert hash(ex) == hash(Example(("left.png", "right.png"), "p", text="q", captions=("a cat", "a dog"),
                                    answers=("red", "red", "blue")))   # unhashable before: TypeError on a list
    assert Split([ex]).rows_sha256 == Split([Example(("left.png", "right.png"), "p", text="q",
                                                     captions=("a cat", "a dog"),
                                                     answers=("red", "red", "blue"))]).rows_sha256


def test_one_string_is_left_for_the_task_kind_to_refuse():
    """``answers="red"`` is not split into letters here: the task kind's check_texts names it and the fix."""
    assert Example("a.png", "1", answers="red").answers == "red"   # type: ignore[arg-type]
