"""Qwen2-VL and Qwen2.5-VL (tiny, from configs): the family row, per-sample routes through a vision tower that
packs every image's patches into one sequence, routed generate, and the PEFT export, on the bare model (the
backbone class, what the train and eval commands load, is tested in test_qwen2vl_backbone.py)."""

from __future__ import annotations

import pytest
import torch
from gemm_rounding import assert_close_at_scale
from qwen_tiny import IMG_TOK, MERGER, TEXT, VE, VID, VIS, VS, inputs, tiny_qwen2vl
from vlm_checks import (
    CheckpointedTower,
    assert_gradient_close,
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_route_per_task,
    assert_peft_export_matches,
    perturb_adapters,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.routing import Route
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.families import family_named
from mtl_lora_vl.mtl_lora_model import unload


def _adapted(v25: bool, method: str = "mtl_lora", **cfg):
    m = tiny_qwen2vl(v25).eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], method=method, r=4, **cfg))
    return perturb_adapters(m)


def _rows_take_their_tasks(m, x):
    """Under the mixed route [a, b] each of two rows gives what its task gives alone (and the tasks differ)."""
    with torch.no_grad():
        alone = []
        for t in "ab":
            with mlv.route(m, t):
                alone.append(m(**x).logits)
        with mlv.route(m, [0, 1]):
            mixed = m(**x).logits
    torch.testing.assert_close(mixed, torch.stack([alone[0][0], alone[1][1]]))
    assert (alone[0][0] - alone[1][0]).abs().max() > 1e-3


def test_default_targets_take_the_vision_blocks_and_the_language_model():
    m = _adapted(False)
    info = m._mtl_lora
    assert info.family == "qwen2_vl"
    vision = sorted(n for n, t in info.towers.items() if t == "image")
    assert vision[:4] == ["model.visual.blocks.0.attn.proj", "model.visual.blocks.0.attn.qkv",
                          "model.visual.blocks.0.mlp.fc1", "model.visual.blocks.0.mlp.fc2"]
    assert all(info.layers[n].packed_rows for n in vision)                     # the tower packs its images
    assert not any(info.layers[n].packed_rows for n, t in info.towers.items() if t == "text")
    assert any(n.endswith("language_model.layers.1.mlp.down_proj") for n in info.towers)
    assert not any("merger" in n for n in info.towers)                          # the projector: only when named
    v25 = _adapted(True)._mtl_lora.towers
    assert "model.visual.blocks.1.mlp.gate_proj" in v25 and "model.visual.blocks.1.attn.qkv" in v25


@pytest.mark.parametrize("v25", [False, True])
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_mixed_route_through_the_packed_vision_tower_equals_each_task_alone(v25, method):
    """Every vision layer sees (patches of all images, dim): a route of one id per row was refused there
    ('routed 2 task ids but the batch here has 32 samples'); now each image's patches take its row's task."""
    row = family_named("qwen2_vl").targets   # the default targets and the merger (the projector)
    m = _adapted(v25, method, targets={"image": [*row["image"], MERGER], "text": list(row["text"])})
    assert_mixed_route_per_task(m, inputs(2, ragged=True), [0, 1])


def test_mixed_gradients_equal_the_per_task_sum_with_and_without_checkpointing():
    m = _adapted(False)
    m.train()
    x = inputs(2)
    params = [p for n, p in m.named_parameters() if "lora_" in n and p.requires_grad]

    def grads(route, checkpointing=False):
        if checkpointing:
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            m.activation_checkpointing_disable()
        total = [torch.zeros_like(p) for p in params]
        for ids, rows in route:
            with mlv.route(m, ids):
                loss = m(**{k: v[rows] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
                            for k, v in x.items()}).logits[:, -1].pow(2).sum()
            for acc, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    acc += g
        return total

    mixed = grads([([0, 1], slice(None))])
    sel = inputs(2)   # each task alone: its own row and image
    per = []
    for t, i in (("a", 0), ("b", 1)):
        xi = {"input_ids": sel["input_ids"][i:i + 1], "attention_mask": sel["attention_mask"][i:i + 1],
              "mm_token_type_ids": sel["mm_token_type_ids"][i:i + 1],
              "pixel_values": sel["pixel_values"].view(2, -1, sel["pixel_values"].shape[-1])[i],
              "image_grid_thw": sel["image_grid_thw"][i:i + 1]}
        with mlv.route(m, t):
            loss = m(**xi).logits[:, -1].pow(2).sum()
        per.append([g if g is not None else torch.zeros_like(p)
                    for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)])
    for g, a, b in zip(mixed, *per):   # one row alone vs in the batch: other GEMM shapes
        assert_gradient_close(g, a + b)
    wrong = grads([("a", slice(None))])   # row 1 on task a: far off the per-task sum
    assert max((g - w).abs().max() / g.abs().max().clamp_min(1e-6) for g, w in zip(mixed, wrong)) > 0.1
    for g, c in zip(mixed, grads([([0, 1], slice(None))], checkpointing=True)):
        torch.testing.assert_close(g, c, atol=1e-6, rtol=1e-5)


SIZES = [(32, 32), (32, 64), (48, 32)]   # 16, 32 and 24 patches: 4, 8 and 6 image tokens


@pytest.mark.parametrize("v25", [False, True])
@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_images_of_different_sizes_take_their_own_rows_task(v25, method):
    """Qwen2-VL's processor keeps each image's aspect ratio, so a batch's images differ in size. Images of 16, 32
    and 24 patches under [a, b, a] were refused ('all of one size'); read as equal shares (24 rows each) the second
    task would have taken 8 of the first image's patches. Each image's patches now take its row's task: in the
    tower, through the merger (4 patches a row) and in the logits and generate (greedy and 3 beams)."""
    row = family_named("qwen2_vl").targets
    m = _adapted(v25, method, targets={"image": [*row["image"], MERGER], "text": list(row["text"])})
    x = inputs(sizes=SIZES, ragged=True)
    ids = [0, 1, 0]
    with torch.no_grad():
        with mlv.route(m, ids):
            vis = m.model.visual(x["pixel_values"], grid_thw=x["image_grid_thw"]).pooler_output
        bounds = [0, 4, 12, 18]   # each image's merged rows
        for i, t in enumerate(ids):
            a, b = bounds[i], bounds[i + 1]
            start = sum(h * w for h, w in ((hp // 8, wp // 8) for hp, wp in SIZES[:i]))
            pv = x["pixel_values"][start:start + SIZES[i][0] * SIZES[i][1] // 64]
            with mlv.route(m, t):
                alone = m.model.visual(pv, grid_thw=x["image_grid_thw"][i:i + 1]).pooler_output
            with mlv.route(m, 1 - t):
                other = m.model.visual(pv, grid_thw=x["image_grid_thw"][i:i + 1]).pooler_output
            assert_close_at_scale(vis[a:b], alone)   # the image alone vs in the packed batch: other GEMM shapes
            assert (vis[a:b] - other).abs().max() > 0.1 * alone.abs().max()   # the other task: far off
    assert_mixed_route_per_task(m, x, ids)


@pytest.mark.parametrize("v25", [False, True])
def test_the_inner_model_attached_on_its_own_routes_images_of_different_sizes(v25):
    """Qwen2VLModel adapted on its own (given targets: family "custom") got the row check but not the packed
    tower's hooks, so any mixed route through its tower was refused ('routed 3 task ids but the batch here has 72
    samples'); it now routes each image's patches by its row, as the whole model does."""
    inner = tiny_qwen2vl(v25).eval().model
    m = perturb_adapters(mlv.attach(inner, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4,
                                                             targets={"image": [VIS], "text": [TEXT]})))
    x = inputs(sizes=SIZES, ragged=True)
    ids = [0, 1, 0]
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(m, t):
                alone.append(m(**x).last_hidden_state)
        with mlv.route(m, ids):
            mixed = m(**x).last_hidden_state
    assert_close_at_scale(mixed, torch.stack([alone[t][i] for i, t in enumerate(ids)]))   # other GEMM shapes
    assert (alone[0] - alone[1]).abs().max() > 1e-3


@pytest.mark.parametrize("checkpointing", [False, True])
def test_mixed_gradients_over_images_of_different_sizes_equal_the_per_task_sum(checkpointing):
    m = _adapted(True)
    m.train()
    if checkpointing:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    x = inputs(sizes=SIZES)
    assert_mixed_gradients_are_per_task_sums(m, x, ("visual",))


def test_images_that_are_not_one_per_routed_row_are_refused_under_a_mixed_route():
    """Four images for two routed rows: which image is whose cannot be told. One task for every row needs no check;
    a failed tower forward leaves no route scope behind."""
    m = _adapted(False)
    with torch.no_grad():
        with mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"one image per routed row; it got 4 "
                                                                          r"image\(s\) for 2 routed rows"):
            m.model.visual(torch.randn(64, 384), grid_thw=torch.tensor([[1, 4, 4]] * 4))
        with mlv.route(m, "a"):
            m.model.visual(torch.randn(64, 384), grid_thw=torch.tensor([[1, 4, 4]] * 4))
        router = m._mtl_lora.router
        outer = Route.from_ids([0, 1])
        with mlv.route(m, outer):
            with pytest.raises(RuntimeError):   # 48 patches' rows for grids of 16 and 32: the tower fails inside
                m.model.visual(torch.randn(40, 384), grid_thw=torch.tensor([[1, 4, 4], [1, 4, 8]]))
            assert router.current is outer
        assert router.current is None


def test_a_data_parallel_replica_of_the_tower_refuses_a_mixed_route_naming_ddp():
    """nn.DataParallel splits the packed patches, not the images, between its replicas (and runs them in threads
    that share one router), so a replica cannot route per image; it ran the route before, without a word."""
    m = _adapted(False)
    replica = m.model.visual._replicate_for_data_parallel()   # what nn.parallel.replicate makes per GPU
    replica._parameters = dict(m.model.visual._parameters)
    x = inputs(sizes=SIZES[:2])
    with torch.no_grad(), mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match="DataParallel replica.*torchrun"):
        replica(x["pixel_values"], grid_thw=x["image_grid_thw"])


def test_a_packed_route_maps_each_images_rows_onto_a_merged_layer_or_refuses():
    r = Route.from_ids([0, 1, 0]).packed_images([16, 32, 24])
    assert r.packed and r.segments == ((0, 0, 16), (1, 16, 48), (0, 48, 72))
    assert r.packed_at(18).segments == ((0, 0, 4), (1, 4, 12), (0, 12, 18))
    assert r.packed_at(18) is r.packed_at(18)
    with pytest.raises(mlv.RoutingError, match="do not map onto whole rows"):
        r.packed_at(8)
    with pytest.raises(mlv.RoutingError, match="one image per routed row"):
        Route.from_ids([0, 1]).packed_images([16, 32, 24])


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_loads_and_unload_takes_the_check_away(tmp_path):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    base = tiny_qwen2vl(False).eval()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    m = _adapted(False)
    m.load_state_dict(state, strict=False)   # same base weights as the fresh copy below
    x = inputs(2)
    mlv.export_lora(m, ["a", "b"], tmp_path / "peft")
    readme = (tmp_path / "peft" / "README.md").read_text()   # PEFT's adapter_names fails on the packed tower
    assert "set_adapter('a')   # one task per call" in readme and "adapter_names=[" not in readme
    fresh = tiny_qwen2vl(False).eval()
    fresh.load_state_dict(state)
    assert_peft_export_matches(m, fresh, tmp_path / "peft", x)
    plain = unload(m)
    assert not plain.model.visual._forward_pre_hooks and not plain.model.visual._forward_hooks   # the checks went too
    assert not plain._forward_pre_hooks and not plain.model._forward_pre_hooks


def test_a_directory_without_its_processor_is_refused_with_the_fix(tmp_path):
    model = tiny_qwen2vl(False)
    model.save_pretrained(tmp_path / "qwen")
    with pytest.raises(FileNotFoundError, match="no processor files.*processor.save_pretrained"):
        load_backbone(f"hf:{tmp_path / 'qwen'}", device="cpu")


def test_one_task_given_as_ids_takes_images_of_any_size():
    """route(model, [0, 0, 0]) is one task for every row, as route(model, "a") is: it needs no image check. The
    tower's check and the banks refused it ('routed 3 task ids but the batch here has 80 samples')."""
    m = _adapted(False)
    thw = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 4, 12]])
    pv = torch.randn(int(thw.prod(-1).sum()), 3 * 2 * 8 * 8)
    with torch.no_grad():
        with mlv.route(m, "a"):
            ref = m.model.visual(pv, grid_thw=thw).pooler_output
        with mlv.route(m, [0, 0, 0]):
            got = m.model.visual(pv, grid_thw=thw).pooler_output
    torch.testing.assert_close(got, ref)


def _two_rows(r0: list[int], r1: list[int]) -> dict:
    """Row 0 full width, row 1 left-padded, with two 4 x 4-patch images."""
    ids = torch.zeros(2, len(r0), dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = torch.tensor(r0), 1
    ids[1, -len(r1):], mask[1, -len(r1):] = torch.tensor(r1), 1
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(32, 384),
                image_grid_thw=torch.tensor([[1, 4, 4]] * 2), mm_token_type_ids=(ids == IMG_TOK).int())


def test_two_images_in_one_row_and_none_in_the_other_take_row_0s_task():
    """As many images as rows, all of one size, passes the tower's count; but row 0 holds both images and row 1
    none, so row 0's second image went through task b's adapters, silently (row 0 differed from task a alone by
    up to 0.39). That was refused; the model's count of each row's images now routes them (images of several sizes:
    test_several_images.py)."""
    m = _adapted(False)
    r0 = [5, 6, VS] + [IMG_TOK] * 4 + [VE, VS] + [IMG_TOK] * 4 + [VE, 7, 8]
    r1 = [9, 10, 11, 12]
    x = _two_rows(r0, r1)
    _rows_take_their_tasks(m, x)


def test_a_row_that_holds_part_of_an_image_is_refused_under_a_mixed_route():
    """Rows counted by their image tokens against each image's count (image_grid_thw): 6 and 2 tokens for two
    images of 4 hold one and a half and half an image."""
    m = _adapted(False)
    r0, r1 = [5, VS] + [IMG_TOK] * 6 + [VE, 7], [9, VS] + [IMG_TOK] * 2 + [VE, 7]
    x = _two_rows(r0, r1)
    with torch.no_grad(), mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"the rows hold \[1.5, 0.5\]"):
        m(**x)


def _three_tasks(v25: bool = False, method: str = "mtl_lora"):
    m = tiny_qwen2vl(v25).eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], method=method, r=4))
    return perturb_adapters(m, std=0.05)


def test_a_refused_tower_call_inside_a_tower_forward_leaves_the_outer_images_route_open():
    """A tower call refused by its pre-hook (no scope entered) still runs the always_call after-hook, which popped
    the *outer* forward's packed scope: the rest of the outer tower read the per-sample route as equal shares of
    the 88 patches (22 each) and mixed tasks within images, silently (0.0037 here)."""
    m = _three_tasks()
    x = inputs(sizes=[(32, 32), (32, 64), (48, 32), (32, 32)])
    pv, thw, ids, vis = x["pixel_values"], x["image_grid_thw"], [0, 1, 0, 2], m.model.visual
    with torch.no_grad(), mlv.route(m, ids):
        ref = vis(pv, grid_thw=thw).pooler_output
    busy = []

    def inner(mod, args):
        if busy:
            return
        busy.append(1)
        with pytest.raises(mlv.RoutingError, match="one image per routed row"):
            vis(pv[:16], grid_thw=thw[:1])   # one image for four routed rows: refused
        busy.pop()

    h = vis.blocks[1].register_forward_pre_hook(inner)
    try:
        with torch.no_grad(), mlv.route(m, ids):
            got = vis(pv, grid_thw=thw).pooler_output
    finally:
        h.remove()
    torch.testing.assert_close(got, ref)
    assert m._mtl_lora.router.current is None


def _visual_rows(items_per_row: list[list[tuple]], dtype=torch.float32) -> dict:
    """Left-padded rows holding images ("i") and videos ("v"), each ``(kind, t, h, w)`` in patches, in row order:
    their placeholders in the ids, their pixels and grids as the processor gives them (images, then videos)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for items in items_per_row:
        r = [5, 6]
        for kind, t, h, w in items:
            r += [VS] + [IMG_TOK if kind == "i" else VID] * (t * h * w // 4) + [VE, 7]
        rows.append(r + [8])
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    x = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMG_TOK).int() + 2 * (ids == VID).int())
    for kind, pixels, grid in (("i", "pixel_values", "image_grid_thw"), ("v", "pixel_values_videos", "video_grid_thw")):
        grids = [thw for items in items_per_row for k, *thw in items if k == kind]
        if grids:
            n = sum(t * h * w for t, h, w in grids)
            x[pixels], x[grid] = torch.randn(n, 384, generator=g, dtype=dtype), torch.tensor(grids)
    return x


@pytest.mark.parametrize("v25", [False, True])
def test_rows_of_images_and_videos_take_their_rows_task(v25):
    """Videos reach the tower in a call of their own, after the images': a mixed route over rows holding images
    and videos was refused ('the rows hold [3, 1, 2, 1] images, and they count images and videos together'). Each
    call's images and videos are now counted per row from their own tokens and grids, so every row's logits and
    generated tokens (greedy and 3 beams) are its task's alone (float64)."""
    m = tiny_qwen2vl(v25).double().eval()
    perturb_adapters(mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))
    x = _visual_rows([[("i", 1, 4, 4), ("v", 2, 4, 4), ("i", 1, 4, 6)], [("v", 1, 4, 4)],
                      [("v", 2, 4, 2), ("v", 1, 4, 4)], [("i", 1, 4, 4)]], torch.float64)
    assert_mixed_route_per_task(m, x, [0, 1, 1, 0])


@pytest.mark.parametrize("grids", [[(2, 4, 4), (2, 4, 4)], [(2, 4, 4), (1, 4, 4)]])
def test_two_videos_in_one_row_and_none_in_the_other_take_row_0s_task(grids):
    """Two videos in row 0 and none in row 1 passed the tower's one-per-row count, so row 0's second video went
    through task b's adapters (row 0 0.027 off task a alone); that was refused, and is now routed: row 0's videos
    take task a, as do the images of a row beside them (a one-task route takes any layout, as before)."""
    m = _three_tasks()
    for items in ([[("v", *g) for g in grids], []], [[("v", *grids[0]), ("i", 1, 4, 4)], [("v", *grids[1])]]):
        x = _visual_rows(items)
        _rows_take_their_tasks(m, x)


def test_a_row_holding_part_of_a_video_is_refused_naming_the_videos():
    """Video tokens matched to each video's count (video_grid_thw): 12 and 4 tokens for two videos of 8."""
    m = _three_tasks()
    x = _visual_rows([[("v", 2, 4, 4)], [("v", 2, 4, 4)]])
    ids = torch.tensor([[5, VS, *[VID] * 12, VE, 7], [0] * 8 + [9, VS, *[VID] * 4, VE, 7]])
    x.update(input_ids=ids, attention_mask=(ids != 0).long(), mm_token_type_ids=2 * (ids == VID).int())
    with torch.no_grad(), mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"hold \[1.5, 0.5\] videos"):
        m(**x)


def test_a_tower_call_out_of_the_models_order_is_refused():
    """Each tower call takes its kind's count in the model's order (images, then videos): the videos encoded first,
    under a forward counted with images, would take the images' rows, so the call is refused, naming both."""
    m = _three_tasks()
    x = _visual_rows([[("i", 1, 4, 4), ("i", 1, 4, 4)], [("v", 2, 4, 4)]])
    module, check = m._mtl_lora.row_check
    with torch.no_grad(), mlv.route(m, [0, 1]):
        check(module, (), x)   # as the model's forward pre-hook counts it
        try:
            with pytest.raises(mlv.RoutingError, match=r"\[32\] patches as call 1 .* images of \[16, 16\] patches"):
                m.model.visual(x["pixel_values_videos"], grid_thw=x["video_grid_thw"])
        finally:
            check.after(module, (), None)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_mixed_gradients_over_rows_of_images_and_videos_equal_the_per_task_sum(checkpointing):
    """Each tower call (images, then videos) routes its own per-row counts: every adapter tensor's gradient under
    rows [a, b, a] holding images and videos in any mix is task a's rows' plus task b's row's (float64), also with
    the vision blocks recomputed in backward (the tower is not called again: each call's count holds)."""
    m = tiny_qwen2vl(False).double()
    perturb_adapters(mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))
    m.train()
    if checkpointing:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    x = _visual_rows([[("i", 1, 4, 4), ("v", 2, 4, 4), ("i", 1, 4, 6)], [("v", 1, 4, 4)],
                      [("v", 2, 4, 2), ("i", 1, 4, 4)]], torch.float64)
    assert_mixed_gradients_are_per_task_sums(m, x, ("visual",))


def test_a_tower_checkpointed_on_its_own_refuses_rows_it_could_not_route_again():
    """Backward recomputed the tower without the model's count of each row's images: rows holding [2, 0, 1, 1]
    images fell back to one image per routed row, and the tower's adapter gradients were up to 15.2 off each task's
    alone (images and videos: refused in backward). Refused in forward now; one image per row, and the whole model
    checkpointed (its count made again), still give each task's gradients."""
    m = tiny_qwen2vl(False).double()
    perturb_adapters(mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))
    m.train()
    tower = m.model.visual
    params = [p for n, p in m.named_parameters() if "lora_" in n and "visual" in n]

    def grads(x, ids, whole=False):
        with mlv.route(m, ids):
            out = (torch.utils.checkpoint.checkpoint(lambda p: m(**{**x, "pixel_values": p}).logits, x["pixel_values"],
                                                     use_reentrant=False) if whole else m(**x).logits)
        return torch.autograd.grad(out[:, -1].pow(2).sum(), params)

    x = _visual_rows([[("i", 1, 4, 4), ("i", 1, 4, 4)], [], [("i", 1, 4, 4)], [("i", 1, 4, 4)]], torch.float64)
    one = _visual_rows([[("i", 1, 4, 4)], [("i", 1, 4, 4)], [("i", 1, 4, 4)], [("i", 1, 4, 4)]], torch.float64)
    want, want_one = grads(x, [0, 1, 1, 0]), grads(one, [0, 1, 1, 0])
    for g, w in zip(grads(x, [0, 1, 1, 0], whole=True), want):
        torch.testing.assert_close(g, w)
    m.model.visual = CheckpointedTower(tower)
    try:
        with pytest.raises(mlv.RoutingError, match=r"checkpointed region of its own .* holding \[2, 0, 1, 1\] images"):
            grads(x, [0, 1, 1, 0])
        for g, w in zip(grads(one, [0, 1, 1, 0]), want_one):
            torch.testing.assert_close(g, w)
    finally:
        m.model.visual = tower


def test_host_grids_route_as_the_read_grid_and_only_where_they_fit_the_towers_call():
    """The backbone's host copy of ``image_grid_thw`` (``host_image_counts(..., inputs)``): the packed tower's hook
    takes it instead of reading the call's grid, and the routed logits are the same; one whose images or patches
    are not the call's (a video call's grid, a beam search's repeated images) is left, the call's grid read."""
    from mtl_lora_vl.adapters.row_images import host_image_counts

    m = _adapted(False)
    x = inputs(sizes=SIZES, ragged=True)
    grid = x["image_grid_thw"].tolist()
    taken = []
    hook = next(h.__self__ for h in m.model.visual._forward_pre_hooks.values())
    image_rows = hook.image_rows

    def spied(args, kwargs, module, host=None):
        taken.append(host)
        return image_rows(args, kwargs, module, host=host)

    hook.image_rows = spied
    with torch.no_grad(), mlv.route(m, [0, 1, 0]):
        read = m(**x).logits
        for given in (grid, grid[:2], [[1, 4, 4]] * 3):   # the call's; one image short; 48 patches, not 72
            with host_image_counts(m, None, {"image_grid_thw": given}):
                assert torch.equal(m(**x).logits, read)
    assert taken == [None] + [{"image_grid_thw": g} for g in (grid, grid[:2], [[1, 4, 4]] * 3)]
    # a call of three 16-patch images with the host's grid of 72 patches: the call's own
    assert image_rows((x["pixel_values"][:48],), {"grid_thw": torch.tensor([[1, 4, 4]] * 3)}, None,
                      host={"image_grid_thw": grid}) == [16] * 3
