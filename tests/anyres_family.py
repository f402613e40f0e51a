"""The tests LLaVA-NeXT and LLaVA-OneVision share: each image reaches the vision tower as a base view and tiles
(anyres), so a mixed route must send each row's tiles to its task. A test module subclasses
:class:`AnyresFamilyTests`, giving its tiny builder's ``batch`` as a static method and its ``tiny`` fixture (a
builder's ``(model class, processor, folder)``); pytest collects the tests under the subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from vlm_checks import (
    assert_merged_checkpoint_matches,
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_route_per_task,
    assert_peft_export_matches,
    perturb_adapters,
)

import mtl_lora_vl as mlv


def fresh(tiny: tuple) -> torch.nn.Module:
    """The base model, fresh from the tiny builder's folder."""
    cls, _, folder = tiny
    return cls.from_pretrained(str(folder)).eval()


def adapted(tiny: tuple, **cfg) -> torch.nn.Module:
    """Tasks a, b (``cfg``: more MTLLoRAConfig fields) with adapters drawn at std 0.1: at the other families' 0.5 the
    tiles' tower activations reach ~1,000, and a merged checkpoint's logits differ from the routed ones by fp32
    rounding alone (1.7e-3; 2.7e-7 at 0.1)."""
    torch.manual_seed(0)
    return perturb_adapters(mlv.attach(fresh(tiny), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, **cfg)), std=0.1)


class AnyresFamilyTests:
    fresh = staticmethod(fresh)
    adapted = staticmethod(adapted)
    batch: ClassVar[Callable]     # (tiny, counts) -> the processor's batch of rows holding counts[r] pictures
    peft_readme_says: ClassVar[str]   # how the PEFT export's README tells why per-row adapter_names cannot route

    @pytest.mark.parametrize("counts", [[1, 1, 1], [2, 0, 1], [0, 3, 1]])
    def test_a_mixed_route_sends_each_rows_tiles_to_its_task(self, tiny, counts):
        """Logits, greedy and 3-beam generate under [a, b, a] equal each task's own rows (pictures of three aspects).
        Without the tiles' routing the tower got 11 to 14 tiles for 3 routed rows (refused by the layers: a mixed
        route could not run at all)."""
        assert_mixed_route_per_task(self.adapted(tiny), self.batch(tiny, counts), [0, 1, 0])

    def test_host_image_counts_route_the_tiles_as_the_ids_without_reading_them(self, tiny, monkeypatch):
        """Each row's images from the host (host_image_counts: lm_loss(image_counts=), the loader's lm_image_counts)
        route [2, 0, 1] pictures' tiles as counting the ids does, without reading them; counts that do not add up
        to the images are left for the ids' count."""
        from mtl_lora_vl import family_images
        from mtl_lora_vl.adapters.row_images import host_image_counts

        m, x = self.adapted(tiny), self.batch(tiny, [2, 0, 1])
        read, reads = family_images._token_counts, []
        with torch.no_grad(), mlv.route(m, [0, 1, 0]):
            want = m(**x).logits
            monkeypatch.setattr(family_images, "_token_counts", lambda *a: reads.append(a) or read(*a))
            with host_image_counts(m, [2, 0, 1]):
                torch.testing.assert_close(m(**x).logits, want)
            assert not reads
            with host_image_counts(m, [1, 0, 1]):
                torch.testing.assert_close(m(**x).logits, want)
            assert len(reads) == 1

    def test_the_projector_routes_tiles_too(self, tiny):
        m = self.adapted(tiny, targets={"image": [r"multi_modal_projector\.linear_(1|2)$"], "text": [r"(q|v)_proj$"]})
        assert_mixed_route_per_task(m, self.batch(tiny, [1, 2, 0]), [1, 0, 1])

    @pytest.mark.parametrize("checkpointing", [False, True])
    def test_mixed_gradients_equal_the_per_task_sums(self, tiny, checkpointing):
        m = self.adapted(tiny)
        m.train()
        if checkpointing:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert_mixed_gradients_are_per_task_sums(m, self.batch(tiny, [2, 1, 1]), ("vision_tower", "language_model"))

    @pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
    def test_peft_export_loads_with_the_same_outputs(self, tiny, tmp_path):
        pytest.importorskip("peft")
        m = self.adapted(tiny)
        mlv.export_lora(m, ["a", "b"], tmp_path / "peft")
        assert_peft_export_matches(m, self.fresh(tiny), tmp_path / "peft", self.batch(tiny, [1, 1]))
        # PEFT names one adapter per input row in every layer: the tower's tiles cannot take them (the README told
        # LLaVA-NeXT users to call model(**inputs, adapter_names=[...]), which PEFT refused; helper 166)
        readme = (tmp_path / "peft" / "README.md").read_text()
        assert "adapter_names=[" not in readme and self.peft_readme_says in readme

    def test_a_merged_checkpoint_loads_with_from_pretrained_and_the_same_outputs(self, tiny, tmp_path):
        m = self.adapted(tiny)
        assert_merged_checkpoint_matches(m, tiny[0], self.batch(tiny, [1, 2]), tmp_path / "merged")
