"""Idefics3 / SmolVLM image splitting, as their Hugging Face image processor splits (``do_image_splitting``).

The processor (``Idefics3ImageProcessor``, ``SmolVLMImageProcessor``: torchvision calls on the 8-bit image) resizes
the image's longest edge to ``size["longest_edge"]`` L (the aspect kept, the other side truncated and made even:
a small image is enlarged), resizes that again to whole multiples of ``max_image_size["longest_edge"]`` M, and cuts
it into a ``rows x cols`` grid of M x M crops, row by row, followed by the global image: the resized one squashed
to M x M. An image that comes out at M x M itself is that one view (``rows = cols = 0``). The prompt holds per crop
``<fake_token_around_image><row_r_col_c>`` and ``image_seq_len`` image tokens, a newline after each row, then
``\\n<fake_token_around_image><global-img>``, the global image's tokens and ``<fake_token_around_image>``.

:func:`split_views` does the same in a loader worker, with the processor's own calls, so the pixels are its,
bit for bit: the views stacked top to bottom, a ``(3, V·M, M)`` uint8 strip carrying the image's original size
(:func:`~mtl_lora_vl.data.anyres.image_size_of`), as LLaVA-NeXT's anyres strips do (a batch shares one canvas,
:func:`~mtl_lora_vl.data.anyres.pad_images`). :class:`SplitGeometry` holds the model's facts and the ids around the
crops, so the collator writes each image's ids from its size alone, in plain Python (picklable, in workers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .anyres import with_size

__all__ = ["SplitGeometry", "most_grid", "split_views"]

_MAX_SIDE = 4096   # the processor's MAX_IMAGE_SIZE: no side past it after the longest-edge resize


@dataclass(frozen=True)
class SplitGeometry:
    """An Idefics3 / SmolVLM model's splitting facts (plain data): ``tile`` (M, the crops' and the tower's side),
    ``longest_edge`` (L, the processor's ``size``), ``seq_len`` (image tokens per view), ``interpolation`` (the
    processor's resampling filter, a torchvision mode name), and the ids of the prompt: ``image_token_id``,
    ``global_open`` (``<fake_token_around_image><global-img>``), ``close`` (``<fake_token_around_image>``),
    ``crop_open`` (``<fake_token_around_image><row_r_col_c>`` for each r, c up to :attr:`most_grid`, row-major),
    ``newline`` and ``gap`` (``"\\n"`` after a row, ``"\\n\\n"`` after the last one)."""

    tile: int
    longest_edge: int
    seq_len: int
    image_token_id: int
    global_open: tuple[int, ...]
    close: tuple[int, ...]
    crop_open: tuple[tuple[int, ...], ...]
    newline: tuple[int, ...]
    gap: tuple[int, ...]
    interpolation: str = "lanczos"
    several_fill: None = None   # (anyres's: an image of a row of several is split as alone)

    @property
    def most_grid(self) -> int:
        """The most crops per side an image has (:func:`most_grid`)."""
        return most_grid(self.tile, self.longest_edge)

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """``(width, height)`` of a ``w`` x ``h`` image after the longest-edge resize (the processor's arithmetic)."""
        from transformers.models.idefics3.image_processing_idefics3 import (
            _resize_output_size_rescale_to_max_len,
            _resize_output_size_scale_below_upper_bound,
        )

        h, w = _resize_output_size_rescale_to_max_len(int(h), int(w), max_len=self.longest_edge)
        h, w = _resize_output_size_scale_below_upper_bound(h, w, max_len=_MAX_SIDE)
        return w, h

    def canvas(self, size: Sequence[int]) -> tuple[int, int]:
        """``(h, w)``, whole multiples of M, the processor resizes an image of ``size`` ``(h, w)`` to before cutting
        (its ``resize_for_vision_encoder``, on the longest-edge resize's output)."""
        w, h = self.resized(int(size[1]), int(size[0]))
        m, aspect = self.tile, w / h
        if w >= h:
            w = math.ceil(w / m) * m
            h = math.ceil(int(w / aspect) / m) * m
        else:
            h = math.ceil(h / m) * m
            w = math.ceil(int(h * aspect) / m) * m
        return h, w

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """``(rows, cols)`` of crops of an image of ``size`` (``(0, 0)``: not split, the one M x M view)."""
        h, w = self.canvas(size)
        return (h // self.tile, w // self.tile) if h > self.tile or w > self.tile else (0, 0)

    def views(self, size: Sequence[int]) -> int:
        """The crops and the global image of an image of ``size`` (1 where it is not split)."""
        rows, cols = self.grid(size)
        return rows * cols + 1 if rows else 1

    @property
    def most_views(self) -> int:
        """The most views any image has."""
        return self.most_grid ** 2 + 1

    def tokens(self, size: Sequence[int]) -> int:
        """The image tokens an image of ``size`` fills: ``seq_len`` per view."""
        return self.views(size) * self.seq_len

    def image_ids(self, size: Sequence[int]) -> list[int]:
        """The ids an image of ``size`` fills in a prompt, as the processor writes and tokenises them."""
        return self.grid_ids(*self.grid(size))

    def grid_ids(self, rows: int, cols: int) -> list[int]:
        """The ids of an image split into ``rows x cols`` crops (0 x 0: not split)."""
        image = [self.image_token_id] * self.seq_len
        out: list[int] = []
        for r in range(rows):
            for c in range(cols):
                out += [*self.crop_open[r * self.most_grid + c], *image]
            out += self.gap if r == rows - 1 else self.newline
        return [*out, *self.global_open, *image, *self.close]

    def strip(self, img: Any, several: bool = False) -> Tensor:
        """:func:`split_views` (an image of a row of several is split as alone, as the processor does)."""
        return split_views(img, self)


def most_grid(tile: int, longest_edge: int) -> int:
    """The most crops per side an image has: its longest side at ``longest_edge`` (made even, as the processor
    rounds it: an odd L gives a side of L + 1), or at the processor's 4096 cap, in crops of ``tile``."""
    return math.ceil(min(longest_edge + longest_edge % 2, _MAX_SIDE) / tile)


def split_views(img: Any, geo: SplitGeometry) -> Tensor:
    """An RGB PIL image as the processor's views, a ``(3, V·M, M)`` uint8 strip (the crops row by row, then the
    global image; or the one view), carrying the image's ``(h, w)``: the processor's own torchvision calls on the
    uint8 image (Lanczos where torchvision has it on the CPU, 0.27 on, else bicubic, as the processor falls back)."""
    import torchvision
    import torchvision.transforms.v2.functional as tvF

    name = geo.interpolation.upper()
    if name == "LANCZOS" and tuple(int(v) for v in torchvision.__version__.split(".")[:2]) < (0, 27):
        name = "BICUBIC"
    mode = getattr(tvF.InterpolationMode, name)
    x = tvF.pil_to_tensor(img)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    m = geo.tile
    rw, rh = geo.resized(w, h)
    x = tvF.resize(x, [rh, rw], interpolation=mode, antialias=True)
    ch, cw = geo.canvas((h, w))
    x = tvF.resize(x, [ch, cw], interpolation=mode, antialias=True)
    if ch > m or cw > m:
        crops = x.unfold(1, m, m).unfold(2, m, m).permute(1, 2, 0, 3, 4).reshape(-1, 3, m, m)
        whole = tvF.resize(x, [m, m], interpolation=mode, antialias=True)
        x = torch.cat([crops, whole[None]]).transpose(0, 1).reshape(3, -1, m)
    return with_size(x.contiguous(), (h, w))
