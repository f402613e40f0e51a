"""README.md's LLaVA-NeXT and LLaVA-OneVision figures (image tokens, views), from the package's anyres arithmetic
(:class:`AnyresGeometry`, which ``test_anyres_sizes`` and the families' tests hold to the processors') at the released
models' geometry: LLaVA-1.6, 336-px tiles of 24 x 24 features at its five pinpoints; OneVision, 384-px tiles of
27 x 27 at pinpoints of 1 to 6 tiles a side, ``anyres_max_9``. Each figure is also checked to be the README's."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtl_lora_vl.data.anyres import AnyresGeometry
from mtl_lora_vl.family_anyres import llava_onevision_video_tokens

README = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())

NEXT = AnyresGeometry(tile=336, pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)), grid=24,
                      view_tokens=576)
ONEVISION = AnyresGeometry(tile=384, pinpoints=tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7)),
                           grid=27, view_tokens=729, max_tiles=9)


def _says(text: str) -> bool:
    return " ".join(text.split()) in README


@pytest.mark.parametrize(("w", "h", "tokens", "said"), [
    (640, 480, 2340, "2,340 for a 640 x 480 photo"), (480, 640, 2352, "2,352 for 480 x 640"),
    (1024, 256, 1890, "1,890 for 1024 x 256"), (64, 48, 1368, "1,368 for 64 x 48"),
    (500, 500, 2928, "2,928 for a square")])
def test_llava_next_tokens_per_picture(w, h, tokens, said):
    assert NEXT.tokens((h, w)) == tokens
    assert _says(said), said


def test_onevision_tokens_and_views():
    assert (ONEVISION.tokens((480, 640)), ONEVISION.views((480, 640))) == (2929, 5)
    assert (ONEVISION.tokens((1080, 1920)), ONEVISION.views((1080, 1920))) == (7269, 16)
    assert _says("2,929 tokens and 5 views for 640 x 480; 7,269 and 16 views for 1080p")
    assert ONEVISION.tokens((1152, 1152)) == 729 + 81 * 82 == 7371 == 10 * 730 + 71


def test_onevision_video_tokens_per_frame():
    """A video's tokens by the model's pooling (27 x 27 features pooled to 14 x 14 a frame) and a newline."""
    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14)))
    assert llava_onevision_video_tokens(model, 8) == 8 * 196 + 1
    assert _says("196 per frame + 1 on the released model")


def test_onevision_reaches_its_6_x_6_pinpoint_only_past_2304_px_a_side():
    """The 37 views of the 6 x 6 pinpoint are a picture's past 2304 px a side; a 4:3 photo, however large, stops at
    31 (1920 x 2304) and a 16:9 one at 25 (1536 x 2304): the README said 37 'for pictures past 2304 px'."""
    assert ONEVISION.pinpoint((2305, 2305)) == (2304, 2304) and ONEVISION.views((2305, 2305)) == 37
    assert max(ONEVISION.views((3 * k, 4 * k)) for k in range(100, 3001, 100)) == 31
    assert max(ONEVISION.views((9 * k, 16 * k)) for k in range(40, 1201, 40)) == 25
    assert _says("37 views, for pictures past 2304 px a side, at most 31 for a 4:3 photo and 25 for a 16:9 one")


def test_readme_states_no_other_token_figure_for_these_sizes():
    """Each 'N for W x H' the LLaVA-NeXT paragraph gives is the one computed above (none stale beside it)."""
    paragraph = README[README.index("**LLaVA-NeXT.**"):README.index("**LLaVA-OneVision.**")]
    stated = re.findall(r"(\d,\d{3}) for (\d+ x \d+)", paragraph)
    assert stated and all(int(n.replace(",", "")) == NEXT.tokens(tuple(map(int, s.split(" x ")))[::-1])
                          for n, s in stated), stated
