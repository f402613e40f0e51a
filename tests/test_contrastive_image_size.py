"""Images of another size than the contrastive backbone takes are refused by name, with the fix.

open_clip's towers failed deep inside with "The size of tensor a (37) must match the size of tensor b (17)" (a 48 px
batch for a 32 px model): encode_image, CoCa's caption_logits and generate now say what size they take and how to
get there.
"""

import re

import pytest
import torch
from vl_tiny import tiny_backbone


@pytest.mark.parametrize("coca", [False, True])
@pytest.mark.parametrize("side", [48, 16])
def test_encode_image_refuses_another_size_naming_the_size_and_the_fix(tmp_path, coca, side):
    bb = tiny_backbone(tmp_path, coca=coca)
    with pytest.raises(ValueError, match=r"encode_image.*\(B, 3, 32, 32\)"
                                         rf".*got \(2, 3, {side}, {side}\).*preprocess_uint8"):
        bb.encode_image(torch.randn(2, 3, side, side))
    assert bb.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)   # its own size still works


def test_coca_caption_paths_refuse_another_size(tmp_path):
    bb = tiny_backbone(tmp_path, coca=True)
    images = torch.randn(2, 3, 48, 48)
    with pytest.raises(ValueError, match=r"generate.*\(B, 3, 32, 32\)"):
        bb.generate(images, max_len=3)
    tokens = torch.tensor([[bb.bos_id, 5, bb.eos_id]] * 2)
    with pytest.raises(ValueError, match=r"caption_logits.*\(B, 3, 32, 32\)"):
        bb.caption_logits(images, tokens)
    assert bb.caption_logits(torch.randn(2, 3, 32, 32), tokens).shape[:2] == (2, 2)


def test_encode_image_still_refuses_a_batch_that_is_not_rgb(tmp_path):
    bb = tiny_backbone(tmp_path)
    with pytest.raises(ValueError, match=r"encode_image.*got \(2, 1, 32, 32\)"):
        bb.encode_image(torch.randn(2, 1, 32, 32))


def test_a_tower_that_takes_other_sizes_still_gets_them(tmp_path, monkeypatch):
    """The size check refused every batch that was not the model's own square before running the tower: an open_clip
    model on a convolutional timm trunk (it pools over any size) lost the 320 px images it took before. The refusal
    now replaces only the tower's own failure."""
    bb = tiny_backbone(tmp_path)
    pooled = torch.nn.Linear(3, 32)
    monkeypatch.setattr(bb, "_image_features", lambda x: pooled(x.mean(dim=(2, 3))))   # a trunk that pools any size
    assert bb.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 32)


@pytest.mark.parametrize("error", [ValueError("Input image size (48*48) doesn't match model (32*32)."),
                                   AssertionError("Input height (48) doesn't match model (32)."),
                                   RuntimeError("Input type (double) and bias type (float) should be the same")])
def test_a_towers_own_failure_on_another_size_reads_as_the_refusal_with_its_words(tmp_path, monkeypatch, error):
    """Hugging Face CLIP refuses another size with a ValueError, a timm ViT trunk (open_clip timm_model_name) with
    an AssertionError: only a RuntimeError was turned into the refusal, so these lost the size and the fix (both
    read so before the check ran the tower). And the tower's own words were dropped: a wrong-size batch that failed
    otherwise (a dtype error) read as the size alone."""
    bb = tiny_backbone(tmp_path)
    monkeypatch.setattr(bb, "_image_features", lambda x: (_ for _ in ()).throw(error))
    with pytest.raises(ValueError, match=r"encode_image expects .*\(B, 3, 32, 32\).*got \(2, 3, 48, 48\)"
                                         r".*preprocess_uint8.*the image tower said: " + re.escape(str(error))):
        bb.encode_image(torch.randn(2, 3, 48, 48))


def test_out_of_memory_on_another_size_stays_out_of_memory(tmp_path, monkeypatch):
    """A convolutional trunk out of memory on large images became the size ValueError: a caller that catches
    torch.cuda.OutOfMemoryError (to retry with a smaller batch) never saw it."""
    bb = tiny_backbone(tmp_path)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(bb, "_image_features", lambda x: (_ for _ in ()).throw(oom))
    with pytest.raises(torch.cuda.OutOfMemoryError, match="CUDA out of memory"):
        bb.encode_image(torch.randn(2, 3, 48, 48))
