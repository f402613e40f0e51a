"""TrainOptions built in Python with a value of the wrong type (tasks=[...], lr="1e-3") are named by validate(): they
failed deep in the run (AttributeError, TypeError), after a run directory with its config.json was made (review 207)."""
import pytest

from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.training.train import train


@pytest.mark.parametrize("kw, said", [
    (dict(tasks=["vqa", "retrieval"]),
     "--tasks: expected a string, got ['vqa', 'retrieval']; give tasks='vqa,retrieval'"),
    (dict(lr="1e-3"), "--lr: expected a number > 0, got '1e-3'"),
    (dict(steps="5"), "--steps: expected an integer >= 1 (or leave it out), got '5'"),
    (dict(compile=1), "--compile: expected true or false, got 1"),
    # (helper 310) in the words (and with the range) the command line and config files use, from one describer;
    # it said "expected one of 'native', 'square' or None" here and 'one of "native", "square" (or leave it out)' there
    (dict(image_reading=5), '--image-reading: expected one of "native", "square" (or leave it out), got 5'),
])
def test_a_value_of_the_wrong_type_is_named(kw, said, tmp_path):
    with pytest.raises(ValueError) as e:
        TrainOptions(**kw).validate()
    assert str(e.value) == said
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=said.split(":")[0]):
        train(TrainOptions(**kw, out=str(out), device="cpu"))
    assert not out.exists()


def test_numbers_of_the_other_kind_where_allowed_still_pass():
    TrainOptions(lr=1, alpha=16, epochs=2, steps=None).validate()
