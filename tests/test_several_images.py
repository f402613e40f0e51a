"""Rows holding several images, or none, under a mixed-task route (adapters/row_images.py, packed.py): the vision
tower and projector take the batch's images without their rows, so each image must take its own row's task.
Before, a row with two images beside a row with none was refused (the route read image i as row i); every family
now routes each row's images to its task: logits, gradients (with checkpointing) and generate (greedy, beams)
equal each task alone."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llava, tiny_paligemma
from gemm_rounding import assert_close_at_scale
from vl_tiny import left_padded
from vlm_checks import (
    CheckpointedTower,
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_route_per_task,
    perturb_adapters,
)

import mtl_lora_vl as mlv

FAMILIES = ["llava", "paligemma", "gemma3", "idefics3", "qwen2_vl"]
QWEN_SIZES = [(32, 32), (32, 64), (48, 32)]   # 4, 8 and 6 image tokens: a row's images differ in size


def _model(family: str):
    if family == "llava":
        return tiny_llava()
    if family == "paligemma":
        return tiny_paligemma()
    if family == "gemma3":
        from gemma3_tiny import tiny_gemma3

        return tiny_gemma3()
    if family == "idefics3":
        from idefics3_tiny import tiny_idefics3

        return tiny_idefics3()
    from qwen_tiny import tiny_qwen2vl

    return tiny_qwen2vl()


def _adapted(family: str, **cfg):
    torch.manual_seed(0)
    return perturb_adapters(mlv.attach(_model(family).eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, **cfg)))


def several_images(family: str, counts: list[int], seed: int = 0) -> dict:
    """A left-padded batch whose row r holds ``counts[r]`` images (in the family's token layout), each row with its
    own text; the images in row order, as the family's processor lays them out."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    extra: dict = {}
    if family in ("llava", "paligemma"):
        tokens = [[95] * 16] * n
        pixels = torch.randn(n, 3, 32, 32, generator=g)
    elif family == "gemma3":
        from gemma3_tiny import BOI_ID, EOI_ID, IMG_ID, N_IMAGE, NL_ID, SIDE

        tokens = [[NL_ID, BOI_ID, *[IMG_ID] * N_IMAGE, EOI_ID, NL_ID]] * n
        pixels = torch.randn(n, 3, SIDE, SIDE, generator=g)
    elif family == "idefics3":
        from idefics3_tiny import FAKE, GLOBAL, IMG, N_IMAGE, SIDE

        tokens = [[FAKE, GLOBAL, *[IMG] * N_IMAGE, FAKE]] * n
        pixels = torch.zeros(len(counts), max(counts), 3, SIDE, SIDE)   # short rows padded with all-zero images
        for r, c in enumerate(counts):
            pixels[r, :c] = torch.randn(c, 3, SIDE, SIDE, generator=g)
    else:
        from qwen_tiny import IMG_TOK, PATCH, VE, VS

        sizes = [QWEN_SIZES[i % len(QWEN_SIZES)] for i in range(n)]
        grids = [(h // PATCH, w // PATCH) for h, w in sizes]
        tokens = [[VS, *[IMG_TOK] * (h * w // 4), VE] for h, w in grids]
        pixels = torch.randn(sum(h * w for h, w in grids), 384, generator=g)
        extra["image_grid_thw"] = torch.tensor([[1, h, w] for h, w in grids])
    rows, i = [], 0
    for r, c in enumerate(counts):
        text = torch.randint(3, 90, (4 + r,), generator=g).tolist()
        row = [1, *text[:2]]
        for _ in range(c):
            row += tokens[i]
            i += 1
        rows.append(row + text[2:])
    ids, mask = left_padded(rows)
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, **extra)
    if family == "gemma3":
        x["token_type_ids"] = (ids == IMG_ID).long()
    if family == "qwen2_vl":
        x["mm_token_type_ids"] = (ids == IMG_TOK).int()
    return x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("counts", [[2, 0, 1], [0, 3, 1]])
def test_each_rows_images_take_its_task_in_the_logits_and_generate(family, counts):
    """[2, 0, 1] under [a, b, a]: row 0's second image went through task b's adapters before the refusal (row 0
    differed from task a alone by 0.57 on the tiny LLaVA); [0, 3, 1]: row 1's three images through a, b and a."""
    assert_mixed_route_per_task(_adapted(family), several_images(family, counts), [0, 1, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_task_ids_all_equal_are_the_tasks_name(family):
    """A route of ids all equal is one task for rows holding any number of images. The vision tower refused it
    ('routed 3 task ids but the batch here has 4 samples') in every family routed by the image path, so a training
    loop under route(model, task_ids) failed on each batch whose rows shared a task (helper 165)."""
    model, x = _adapted(family), several_images(family, [2, 0, 2])
    with torch.no_grad():
        with mlv.route(model, "b"):
            want = model(**x).logits
        with mlv.route(model, [1, 1, 1]):
            torch.testing.assert_close(model(**x).logits, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_expanded_rows_route_each_rows_images(family):
    """Under expanded_rows(model, 2) (k rows per routed id: candidates scored as full sequences), rows holding
    [2, 2, 0, 0, 1, 1] images under [a, b, a] give each row its id's task. Before, the image path matched the
    route's 3 rows against the 6 counted rows and left the tower unrouted: refused ('routed 3 task ids but the
    batch here has 5 samples'; the LLaVA-NeXT backbone's full-sequence candidate scores failed so), and Qwen2-VL's
    packed tower routed image i as row i, silently (0.61 off)."""
    from mtl_lora_vl.adapters.generation import expanded_rows

    model, x, ids = _adapted(family), several_images(family, [2, 2, 0, 0, 1, 1]), [0, 1, 0]
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(model, t):
                alone.append(model(**x).logits)
        with mlv.route(model, ids), expanded_rows(model, 2):
            mixed = model(**x).logits
    # the image path image by image (mixed) against the batch (alone): 4.2e-5 of the scale on an AVX-512 CPU
    assert_close_at_scale(mixed, torch.stack([alone[ids[j // 2]][j] for j in range(6)]))
    assert (alone[0] - alone[1]).abs().max() > 1e-3   # the tasks differ


@pytest.mark.parametrize("family", ["llava", "paligemma", "idefics3", "qwen2_vl"])   # (Gemma 3's: a bare weight)
def test_the_projector_is_routed_image_by_image_too(family):
    proj = {"llava": "multi_modal_projector.linear_1", "paligemma": "multi_modal_projector.linear",
            "idefics3": "connector.modality_projection.proj", "qwen2_vl": "merger.mlp.0"}[family]
    model = _adapted(family, targets={"image": [rf"{proj}$"], "text": [r"(q|v)_proj$"]})
    assert any(n.endswith(proj) for n in model._mtl_lora.layers)
    assert_mixed_route_per_task(model, several_images(family, [1, 2, 0]), [1, 0, 1])


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_vl"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_mixed_gradients_over_several_images_per_row_equal_the_per_task_sums(family, checkpointing):
    model = _adapted(family)
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    vision = "visual" if family == "qwen2_vl" else "vision"
    assert_mixed_gradients_are_per_task_sums(model, several_images(family, [2, 1, 3]), (vision, "language_model"
                                             if family != "idefics3" else "text_model"))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_host_image_counts_route_as_the_ids_without_reading_them(monkeypatch, family):
    """Each row's images given from the host (host_image_counts: lm_loss(image_counts=), the loader's
    lm_image_counts) route [2, 0, 1] as counting the ids does, without reading them (family_images._token_counts;
    Qwen2-VL's images of three sizes too); a count for other rows is refused by name, one that does not add up to
    the images (crops: more images than placeholders) is left for the ids' count."""
    from mtl_lora_vl import family_images
    from mtl_lora_vl.adapters.row_images import host_image_counts

    model, x = _adapted(family), several_images(family, [2, 0, 1])
    read, reads = family_images._token_counts, []
    with torch.no_grad(), mlv.route(model, [0, 1, 0]):
        want = model(**x).logits
        monkeypatch.setattr(family_images, "_token_counts", lambda *a: reads.append(a) or read(*a))
        with host_image_counts(model, [2, 0, 1]):
            torch.testing.assert_close(model(**x).logits, want)
        assert not reads
        with host_image_counts(model, [2, 1]), pytest.raises(ValueError, match=r"image_counts \[2, 1\] do not give "
                                                                                r"the 3 rows of the forward"):
            model(**x)
        with host_image_counts(model, [1, 0, 1]):
            torch.testing.assert_close(model(**x).logits, want)
        assert len(reads) == 1


def test_a_row_whose_image_tokens_are_part_of_an_image_is_refused():
    """24 and 8 image tokens for two images of 16 (rows holding 1.5 and 0.5 images) cannot route images; one task
    for the batch takes them (the Qwen2-VL count: test_qwen2vl.py)."""
    model = _adapted("llava")
    ids = torch.tensor([[1, 5, *[95] * 24, 7], [1, 9, *[95] * 8, *[7] * 17]])
    x = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"rows hold \[1.5, 0.5\] images, and "
                                                                                r"a row's image tokens are not"):
            model(**x)
        with mlv.route(model, "a"):
            model(**x)


def test_other_images_than_the_rows_image_tokens_are_refused():
    """The rows' image tokens hold 3 images of 16 and the model gets 4 (12 tokens each: rows of 2.67 and 1.33): which
    is whose cannot be told. A tower that gets other images than its forward counted is refused too."""
    model = _adapted("llava")
    x = several_images("llava", [2, 1])
    with torch.no_grad():
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2.6+\d*, 1.3+\d*\] images, and a "
                                                                                r"row's image tokens are not a whole"):
            model(**{**x, "pixel_values": torch.randn(4, 3, 32, 32)})
        check = model._mtl_lora.row_check[1]
        with mlv.route(model, [0, 1]):
            check(model, (), x)   # a forward in progress, as the model's hook opens it
            assert check.current() == [2, 1]   # what the model's forward counted
            try:
                with pytest.raises(mlv.RoutingError, match=r"vision_tower got 4 images for rows holding \[2, 1\]"):
                    model.model.vision_tower(torch.randn(4, 3, 32, 32))
            finally:
                check.after(model, (), None)


def test_the_count_is_gone_after_each_forward_and_generate():
    """The rows' counts live only while their forward (or generate) runs: a later direct tower call under a mixed
    route of as many rows as images reads image i as row i, as without the count."""
    model = _adapted("llava")
    check = model._mtl_lora.row_check[1]
    x = several_images("llava", [2, 0])
    with torch.no_grad(), mlv.route(model, [0, 1]):
        model(**x)
        model.generate(**x, max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert check.current() is None and not check._counts and not check.checked
        pixels = x["pixel_values"]
        mixed = model.model.vision_tower(pixels).last_hidden_state
    with torch.no_grad():
        alone = []
        for t in "ab":
            with mlv.route(model, t):
                alone.append(model.model.vision_tower(pixels).last_hidden_state)
    # the tower image by image (mixed) against the batch (alone): 4.2e-6 of the scale on an AVX-512 CPU
    assert_close_at_scale(mixed, torch.stack([alone[0][0], alone[1][1]]))
    assert (alone[0] - alone[1]).abs().max() > 0.01 * alone[0].abs().max()   # the tasks differ


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_whole_forward_replays_each_rows_images_task(family, reentrant):
    """torch.utils.checkpoint around the whole forward, backward after the route scope closed (as the routing contract
    allows): the recomputation's count saw no current route and counted nothing, so the tower replayed image i as
    row i: rows [2, 1, 0] under [a, b, a] gave LLaVA adapter gradients 902 off the per-task sums, silently
    (helper 163). The count now reads the replayed route."""
    from torch.utils.checkpoint import checkpoint

    model = _adapted(family)
    model.train()
    x = several_images(family, [2, 1, 0])
    params = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    keys = list(x)

    def forward(*values):
        return model(**dict(zip(keys, values))).logits

    def grads(tasks, rows):   # (.backward: a reentrant checkpoint's parameters get .grad, not autograd.grad's)
        for p in params:
            p.grad = None
        with mlv.route(model, tasks):
            values = [v.clone().requires_grad_() if v.is_floating_point() else v for v in x.values()]
            loss = checkpoint(forward, *values, use_reentrant=reentrant)[rows, -1].pow(2).sum()
        loss.backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    mixed = grads([0, 1, 0], [0, 1, 2])
    assert any(g.abs().sum() > 0 for g, (n, _) in zip(mixed, [(n, p) for n, p in model.named_parameters()
                                                               if "lora_" in n and p.requires_grad]) if "vis" in n)
    sums = [ga + gb for ga, gb in zip(grads("a", [0, 2]), grads("b", [1]))]
    # Each adapter tensor at 1e-2 of its gradient's scale: the mixed route runs the image path image by image, the
    # per-task sums batched (other GEMM shapes); on an AVX-512 CPU LLaVA's vision adapters' gradients differ by 4.5e-3
    # of their scale (in float64 by 3e-13: rounding), a row on the wrong task by >= 0.31 of it.
    for g, want in zip(mixed, sums):
        assert_close_at_scale(g, want, fraction=1e-2)
    swapped = grads([1, 0, 1], [0, 1, 2])   # every row on the other task: the tasks differ
    assert max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(swapped, sums) if w.abs().max() > 0) > 0.1


def test_a_tower_checkpointed_on_its_own_refuses_rows_of_several_images():
    """Backward recomputed a tower checkpointed apart from the model without the model's count: LLaVA rows [2, 0, 1]
    failed in backward ('Recomputed values ... have different metadata'). Refused in forward, naming the fix; one
    image per row still trains."""
    model = _adapted("llava")
    model.train()
    tower = model.model.vision_tower
    model.model.vision_tower = CheckpointedTower(tower)
    try:
        with mlv.route(model, [0, 1, 0]), pytest.raises(mlv.RoutingError, match=r"checkpointed region .*\[2, 0, 1\]"):
            model(**several_images("llava", [2, 0, 1]))
        with mlv.route(model, [0, 1, 0]):
            model(**several_images("llava", [1, 1, 1])).logits.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tower.named_parameters() if "lora_" in n)
    finally:
        model.model.vision_tower = tower


def test_a_projector_checkpointed_on_its_own_is_refused_by_its_name():
    """The refusal said 'the vision tower runs in a checkpointed region of its own' for a checkpointed projector
    (the tower not checkpointed): it names the module checkpointed."""
    model = _adapted("llava", targets={"image": [r"multi_modal_projector\.linear_1$"], "text": [r"(q|v)_proj$"]})
    model.train()
    proj = model.model.multi_modal_projector
    model.model.multi_modal_projector = CheckpointedTower(proj)
    try:
        with mlv.route(model, [0, 1, 0]), pytest.raises(
                mlv.RoutingError, match=r"image path's model\.multi_modal_projector runs in a checkpointed region"):
            model(**several_images("llava", [2, 0, 1]))
    finally:
        model.model.multi_modal_projector = proj


@pytest.mark.parametrize("family, name", [("llava", "vision_tower"), ("qwen2_vl", "visual")])
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")   # (refused in forward)
def test_a_tower_called_under_no_grad_routes_and_one_checkpointed_reentrant_is_refused(family, name):
    """A tower the model calls under torch.no_grad() (frozen: nothing recomputes it) in a training forward was
    refused as 'checkpointed region of its own' (grad mode differed from the model's forward): rows [2, 0, 1] now
    route as in a no-grad forward. A reentrant checkpoint around the tower alone (also run without gradients, and
    recomputed in backward) is still refused."""
    model = _adapted(family)
    model.train()
    x = several_images(family, [2, 0, 1])
    with torch.no_grad(), mlv.route(model, [0, 1, 0]):
        want = model(**x).logits
    tower = getattr(model.model, name)
    try:
        setattr(model.model, name, CheckpointedTower(tower, no_grad=True))
        with mlv.route(model, [0, 1, 0]):
            torch.testing.assert_close(model(**x).logits, want)
        setattr(model.model, name, CheckpointedTower(tower, reentrant=True))
        with mlv.route(model, [0, 1, 0]), pytest.raises(mlv.RoutingError, match=r"checkpointed region .*\[2, 0, 1\]"):
            model(**x)
    finally:
        setattr(model.model, name, tower)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("ids", [[0, 1, 0], [1, 1, 1]], ids=["mixed", "equal"])
def test_the_image_paths_scopes_take_no_hooks_under_recompute_false(family, ids):
    """The per-image and one-task scopes on the vision tower install saved-tensor hooks only where an outer scope of
    the model has them: under a trainer's route(..., recompute=False) the tower ran with replay hooks, ~4 µs per
    tensor it saved (81 unpacks a step on a tiny OneVision; helper 167). Under the default scope they keep them."""
    model, x = _adapted(family), several_images(family, [2, 0, 2])
    tower = next(m for n, m in model.named_modules() if n.endswith(("vision_tower", "visual")))
    seen = []
    handle = tower.register_forward_pre_hook(
        lambda *_: seen.append(torch._C._autograd._top_saved_tensors_default_hooks(False)))
    try:
        for recompute in (False, True):
            with mlv.route(model, ids, recompute=recompute):
                model(**x).logits.sum().backward()
    finally:
        handle.remove()
    assert seen[0] is None and seen[1] is not None
