"""The GPU path's forward, checked on the CPU: the model's weights faked onto ``device="cuda"`` under torch's
``FakeTensorMode`` (frozen base weights bf16, trainable ones kept fp32, as a bf16 run has them) and the loader's batch
moved there with ``to_device``, as the training step does. No data is computed and no GPU is needed, but a CPU tensor
meeting a "CUDA" one raises a device-mismatch error, and a read of device data on the host (``.item()``,
``.tolist()``, ``nonzero``, a data-dependent shape) raises a data-dependent error: device mixing and host syncs in the
hot path fail here, where the other tests (all on the CPU) cannot see them.

Qwen2-VL's and Mistral 3's forwards read their images' sizes themselves (transformers' code), which no fake tensor
answers: their steps run on the CPU instead, each host read attributed to its caller (:class:`_PackageReads`), and
the package's own are checked to be none.

Not covered: the backward (fake CUDA tensors cannot run it without a CUDA device: torch asks the driver for its
context), autocast (disabled without CUDA: the step's autocast(cuda, bf16) is a no-op here, so the dtypes are those of
the weights), values (fake tensors have none), DDP, and the loader's workers and pinned memory."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

import mtl_lora_vl as mlv
import mtl_lora_vl.family_images as family_images
from mtl_lora_vl.adapters.row_images import RowImagesCheck
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.tasks import build_kind, resolve_tasks

CUDA = torch.device("cuda")


def _fake_cuda_works() -> bool:
    try:
        with FakeTensorMode():
            return torch.empty(2, device=CUDA, dtype=torch.bfloat16).device.type == "cuda"
    except Exception:   # an old or odd torch build: nothing to check with
        return False


pytestmark = [pytest.mark.skipif(not _fake_cuda_works(),
                                 reason="this torch cannot fake device='cuda' tensors under FakeTensorMode"),
              # adapters/formation's cache key reads each adapter tensor's address: torch warns for fake tensors
              pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")]


def _fake_onto_cuda(net: nn.Module) -> None:
    """Replace every parameter and buffer of ``net`` by a fake CUDA one of its shape (call under the fake mode):
    frozen floating-point parameters bf16, trainable ones and buffers in their own dtype."""
    for m in net.modules():
        for n, p in list(m._parameters.items()):
            if p is not None:
                dtype = torch.bfloat16 if not p.requires_grad and p.is_floating_point() else p.dtype
                m._parameters[n] = nn.Parameter(torch.empty(p.shape, device=CUDA, dtype=dtype),
                                                requires_grad=p.requires_grad)
        for n, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[n] = torch.zeros(b.shape, device=CUDA, dtype=b.dtype)


def _model_and_loader(backbone: str, tasks: list[str], mode: str,
                      steps: int = 1) -> tuple[MultiTaskModel, MultiTaskLoader]:
    """A MultiTaskModel on the built-in ``backbone`` with MTL-LoRA for ``tasks`` (8 world rows each), in train mode,
    and its training loader (``steps`` batches of 8 rows, on the host)."""
    bb = load_backbone(backbone, device="cpu")
    specs = resolve_tasks(",".join(tasks))
    splits = {s.name: world.build_split(s.data.options.get("world_kind", s.kind), "train", n=8, seed=0)
              for s in specs}
    kinds = {s.name: build_kind(s, splits[s.name], bb) for s in specs}
    heads = nn.ModuleDict({n: k.build_head(bb) for n, k in kinds.items()})
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=tasks, r=4, n_up=2))
    loader = MultiTaskLoader(list(kinds.values()), list(splits.values()), bb, batch_size=8, mode=mode, steps=steps)
    return MultiTaskModel(bb, kinds, heads).train(), loader


def _mode_of(net: nn.Module) -> FakeTensorMode:
    """The fake mode ``net``'s weights were faked under (a second forward runs in it: modes do not mix)."""
    return next(net.parameters()).fake_mode


def _fake_forward(net: MultiTaskModel, batch: dict,
                  faked: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training step's forward of ``batch`` on a fake CUDA device (``faked``: ``net`` is there already, from an
    earlier call); its losses are checked to be there."""
    with FakeTensorMode(allow_non_fake_inputs=True) if not faked else _mode_of(net):
        if not faked:
            _fake_onto_cuda(net)
        total, losses = net(to_device(batch, CUDA, torch.bfloat16, net.backbone))
    assert total.device.type == "cuda" and total.dtype == torch.float32 and total.shape == ()
    assert all(v.device.type == "cuda" and v.shape == () for v in losses.values())
    return total, losses


def test_a_mixed_clip_batch_stays_on_the_device_without_host_reads():
    net, loader = _model_and_loader("builtin", ["vqa", "retrieval"], "mixed")
    batch = next(iter(loader))
    assert set(batch["task_ids"].tolist()) == {0, 1}   # rows of both tasks: a mixed route through both towers
    _, losses = _fake_forward(net, batch)
    assert set(losses) == {"vqa", "retrieval"}


def test_homogeneous_clip_batches_stay_on_the_device_without_host_reads():
    """One task per batch, nlvr's rows holding two images each among them."""
    net, loader = _model_and_loader("builtin", ["vqa", "retrieval", "nlvr"], "homogeneous", steps=8)
    batches = {}
    for b in loader:
        batches.setdefault(next(iter(b["tasks"])), b)
    assert set(batches) == {"vqa", "retrieval", "nlvr"}
    with FakeTensorMode(allow_non_fake_inputs=True):
        _fake_onto_cuda(net)
        for name, b in batches.items():
            total, losses = net(to_device(b, CUDA, torch.bfloat16, net.backbone))
            assert set(losses) == {name} and total.device.type == "cuda"


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ["lora", "task_lora", "mtl_lora"])
def test_each_adapter_method_routes_interleaved_rows_on_the_device_in_the_base_dtype(method):
    """32 rows whose tasks alternate (a route of 32 one-row segments) through bf16 base layers: the adapters are
    made on the base's device, index it with device tensors, and give back the base's dtype."""
    tasks = ["all"] if method == "lora" else ["a", "b", "c"]
    ids = [0] * 32 if method == "lora" else [i % 3 for i in range(32)]
    with FakeTensorMode(allow_non_fake_inputs=True):
        base = _TwoLayers()
        for p in base.parameters():
            p.requires_grad_(False)
        _fake_onto_cuda(base)
        cfg = mlv.MTLLoRAConfig(tasks=tasks, r=4, alpha=8, n_up=2 if method == "mtl_lora" else 1, method=method,
                                targets={"image": ["fc1", "fc2"]})
        model = mlv.attach(base, cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainable)
        with mlv.route(model, ids):
            y = model(torch.empty(32, 5, 16, device=CUDA, dtype=torch.bfloat16))
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16 and y.shape == (32, 5, 16)


def test_a_mixed_llava_batch_stays_on_the_device_with_its_rows_image_counts(monkeypatch):
    """The built-in LLaVA's mixed caption_cls + captioning batch: one language-model pass under a mixed route. The
    training step gives the row check (:mod:`mtl_lora_vl.adapters.row_images`) each row's images from the host (the
    loader's ``lm_image_counts``): no host read of ours. Without them (a caller's ``lm_loss`` without
    ``image_counts``) the check reads the rows' image tokens, ``family_images._token_rows`` (``.tolist()`` of B
    numbers), allowed here by name: answered from the batch's host copy of the ids, and checked to run once.
    transformers' LLaVA checks its image-token count against its features (a host read of its own, not ours):
    ``TRANSFORMERS_DISABLE_TORCH_CHECK=1`` turns that check off."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    net, loader = _model_and_loader("builtin-llava", ["caption_cls", "captioning"], "mixed")
    batch = next(iter(loader))
    assert "lm" in batch and set(batch["task_ids"].tolist()) == {0, 1}
    check = net.backbone.model._mtl_lora.row_check[1]
    given, row_images = [], check.row_images

    def counted(model, args, kwargs, image_counts=None):
        given.append(image_counts)
        return row_images(model, args, kwargs, **({} if image_counts is None else {"image_counts": image_counts}))

    monkeypatch.setattr(check, "row_images", counted)
    _, losses = _fake_forward(net, batch)   # (a host read raises in it)
    assert set(losses) == {"caption_cls", "captioning"} and given == [batch["lm_image_counts"]]

    image_token = net.backbone.model.config.image_token_id
    host_counts = (batch["lm"]["input_ids"] == image_token).sum(-1).tolist()   # the read's answer, made on the host
    reads = []

    def token_rows(model, args, kwargs, token):
        ids = family_images._forward_input(model, args, kwargs, "input_ids")
        assert token == image_token and ids is not None and ids.shape[0] == len(host_counts)
        reads.append(token)
        return list(host_counts)

    monkeypatch.setattr(family_images, "_token_rows", token_rows)
    without = {k: v for k, v in batch.items() if k != "lm_image_counts"}
    _, losses = _fake_forward(net, without, faked=True)
    assert set(losses) == {"caption_cls", "captioning"} and given[-1] is None
    assert reads == [image_token]   # once per forward


class _PackageReads(TorchFunctionMode):
    """Calls that read a tensor's data on the host (on CUDA: a device→host copy and a wait), made directly by the
    package's code (the nearest caller outside torch is a file of ``mtl_lora_vl``): ``ours``, as ``name file:line``;
    the model's own (transformers') are only counted, ``theirs``."""

    READS = frozenset({"tolist", "item", "__int__", "__float__", "__bool__", "__index__", "nonzero", "numpy", "cpu",
                       "unique", "masked_select"})

    def __init__(self) -> None:
        super().__init__()
        self.ours: list[str] = []
        self.theirs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        mask = name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) and \
            args[1].dtype == torch.bool
        if name in self.READS or mask:
            frame = sys._getframe(1)
            while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
                self.ours.append(f"{name} {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}")
            else:
                self.theirs += 1
        return func(*args, **(kwargs or {}))


_PACKAGE = os.path.dirname(mlv.__file__) + os.sep


@pytest.fixture(scope="module")
def packed_dirs(tmp_path_factory):
    from mistral3_tiny import save_tiny_mistral3
    from qwen_tiny import save_tiny_qwen2vl

    root = tmp_path_factory.mktemp("packed_towers")
    return {"qwen2_vl": save_tiny_qwen2vl(root / "qwen2_vl"), "mistral3": save_tiny_mistral3(root / "mistral3")}


@pytest.mark.parametrize("family", ["qwen2_vl", "mistral3"])
def test_a_mixed_packed_tower_step_reads_nothing_of_ours_from_the_device(packed_dirs, family, monkeypatch):
    """A mixed nlvr + captioning training forward (a row of two images of their own sizes among rows of one) through
    Qwen2-VL's / Mistral 3's packed vision tower, on the CPU, its host reads attributed by caller: the tower's hook
    took each image's patch rows from the backbone's host sizes (``image_grid_thw`` / ``image_sizes``), so the
    package reads nothing (it read the call's grid, ``grid.tolist()``, or each image's size, one read per image).
    transformers' own forwards read both themselves (hence not under fake CUDA: the first of theirs would stop it).
    Without the host sizes the hook still reads the call's, once; the losses are the same."""
    net, loader = _model_and_loader(f"hf:{packed_dirs[family]}", ["nlvr", "captioning"], "mixed")
    batch = next(iter(loader))
    assert max(batch["lm_image_counts"]) == 2 and set(batch["task_ids"].tolist()) == {0, 1}
    with torch.no_grad(), _PackageReads() as reads:
        _, losses = net(to_device(batch, torch.device("cpu"), torch.float32, net.backbone))
    assert reads.ours == [] and reads.theirs > 0 and set(losses) == {"nlvr", "captioning"}

    monkeypatch.setattr(RowImagesCheck, "host_inputs", lambda self: {})   # (the hook as without the host sizes)
    with torch.no_grad(), _PackageReads() as reads:
        _, read = net(to_device(batch, torch.device("cpu"), torch.float32, net.backbone))
    assert [r.split()[0] for r in reads.ours] == ["tolist"]
    assert all(torch.equal(losses[k], read[k]) for k in losses)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_a_mixed_anyres_batch_stays_on_the_device_without_host_reads(tmp_path, monkeypatch, family):
    """A tiny LLaVA-NeXT / OneVision at each image's own aspect: the mixed caption_cls + captioning batch's images
    reach the model as strips cut into views on the device, with the loader's host ``image_sizes``. The row check
    counts each image's tiles from those sizes, and the model iterates them (transformers'
    ``image_size_to_num_patches`` and ``unpad_image`` call ``.tolist()`` on each row): the sizes stay on the host, so
    neither reads the device (they were put there, and read back by the check once per forward and by the model
    per image). transformers' own image-token check is turned off, as for LLaVA."""
    import test_llava_next
    import test_llava_onevision

    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    # a small tensor made on the host keeps its values under the fake mode (torch keeps only scalars'), so reading
    # it works, as on a GPU; one on the (fake) device, or moved there, still has none: its read still raises
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)
    build = test_llava_next.build if family == "llava_next" else test_llava_onevision.build
    folder = build(tmp_path / family)[2]
    net, loader = _model_and_loader(f"hf:{folder}", ["caption_cls", "captioning"], "mixed")
    batch = next(iter(loader))
    assert "lm" in batch and set(batch["task_ids"].tolist()) == {0, 1}
    assert batch["image_sizes"] and batch["images"].shape[-1] == 32   # (strips of 32-px views, the sizes apart)
    _, losses = _fake_forward(net, batch)   # (a host read raises in it)
    assert set(losses) == {"caption_cls", "captioning"}


class _BlockingCopies(TorchFunctionMode):
    """Records each host-to-device copy that blocks the host until the device's queue drains: a
    ``torch.tensor(..., device=cuda)``, or a host tensor's ``.to(cuda)`` without ``non_blocking=True``
    (torch copies them with a stream synchronise)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "tensor" and torch.device(kwargs.get("device") or "cpu").type == "cuda":
            self.seen.append("torch.tensor(..., device=cuda)")
        if (name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu"
                and not kwargs.get("non_blocking") and any(getattr(a, "type", a) in ("cuda", CUDA) for a in args[1:])):
            self.seen.append("Tensor.to(cuda)")
        return func(*args, **kwargs)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_views_of_mixed_sizes_are_made_without_waiting_for_the_device(tmp_path, monkeypatch, family):
    """Strips of images with 3 and 5 views: the views past an image's own are zeroed by a mask made from the
    images' host view counts. It was made with torch.tensor(counts, device=cuda): a blocking copy, so every mixed
    forward waited, before its vision tower was queued, for all the device's queued work (the last step's
    backward and optimizer, the batch's own copies). Now the counts go over with non_blocking=True."""
    import test_llava_next
    import test_llava_onevision

    build = test_llava_next.build if family == "llava_next" else test_llava_onevision.build
    bb = load_backbone(f"hf:{build(tmp_path / family)[2]}", device="cpu")
    sizes = [(20, 60), (40, 40)]   # 3 and 5 views of 32 px
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made sizes keep their values, as on a GPU)
    with FakeTensorMode(allow_non_fake_inputs=True):
        strips = torch.zeros(2, 3, 5 * 32, 32, device=CUDA)
        with _BlockingCopies() as copies:
            made = bb._vision_inputs(strips, sizes)
    assert copies.seen == []
    assert made["pixel_values"].shape == (2, 5, 3, 32, 32) and made["pixel_values"].device.type == "cuda"
    assert made["image_sizes"].device.type == "cpu" and made["image_sizes"].tolist() == [[20, 60], [40, 40]]


def test_idefics3_views_of_mixed_sizes_are_made_without_waiting_for_the_device(tmp_path, monkeypatch):
    """Idefics3's strips of a wide and a square image (9 and 17 views): the views past an image's own are zeroed by
    a mask made from the images' host view counts, with torch.tensor(counts, device=cuda): a blocking copy, so every
    mixed forward waited for all the device's queued work before its vision tower was queued. Now the counts go over
    with non_blocking=True, as LLaVA-NeXT's do."""
    from idefics3_tiny import tiny_idefics3_backbone

    bb = tiny_idefics3_backbone(tmp_path)
    m, sizes = bb.image_size, [(40, 150), (50, 50)]
    counts = [bb.resize.anyres.views(s) for s in sizes]
    assert counts == [9, 17]
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made counts keep their values)
    with FakeTensorMode(allow_non_fake_inputs=True):
        strips = torch.zeros(2, 3, 17 * m, m, device=CUDA)
        with _BlockingCopies() as copies:
            made = bb._vision_inputs(strips, sizes)
    assert copies.seen == []
    assert made["pixel_values"].shape == (2, 17, 3, m, m) and made["pixel_values"].device.type == "cuda"


@pytest.mark.parametrize("native", [True, False], ids=["own_sizes", "square"])
def test_mistral3_image_sizes_are_handed_over_on_the_host(packed_dirs, monkeypatch, native):
    """Mistral 3's image_sizes were made on the device (torch.tensor(sizes, device=cuda)): Pixtral's tower slices
    each image's patches by them and its patch merger splits and reshapes by them (reads of each row: on a GPU, the
    first right after the patch conv was queued, so the tower waited for the device's queued work, and more per
    image); the package's own row check read them too. transformers only reads them on the host (iteration,
    ``//``, slices and ``split`` sizes; get_image_features copies them over itself), so now they stay there."""
    bb = load_backbone(f"hf:{packed_dirs['mistral3']}", device="cpu")
    bb.native_aspect(native)
    sizes = [(16, 32), (32, 16)] if native else None
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made sizes keep their values)
    with FakeTensorMode(allow_non_fake_inputs=True):
        canvas = torch.zeros(2, 3, 32, 32, device=CUDA)
        with _BlockingCopies() as copies:
            made = bb._vision_inputs(canvas, sizes)
    assert copies.seen == [] and made["pixel_values"].device.type == "cuda"
    assert made["image_sizes"].device.type == "cpu"
    assert made["image_sizes"].tolist() == ([[16, 32], [32, 16]] if native else [[32, 32], [32, 32]])


def test_qwen2vl_grid_goes_over_without_waiting_for_the_device(packed_dirs, monkeypatch):
    """Qwen2-VL's ``image_grid_thw`` is made from the host sizes; made with torch.tensor(grid, device=cuda) it was a
    blocking copy, so every forward waited for the device's queued work (the last step's backward and optimizer)
    before its vision tower was queued. It goes over with non_blocking=True, as LLaVA-NeXT's view counts do (the
    model needs it on the device: its cu_seqlens are computed there)."""
    bb = load_backbone(f"hf:{packed_dirs['qwen2_vl']}", device="cpu")
    vision = bb.model.config.vision_config
    unit = vision.patch_size * vision.spatial_merge_size   # (a side's multiple)
    sizes = [(unit, 2 * unit), (2 * unit, unit)]
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 1024)   # (host-made values keep their values)
    with FakeTensorMode(allow_non_fake_inputs=True):
        canvas = torch.zeros(2, 3, 2 * unit, 2 * unit, device=CUDA)
        with _BlockingCopies() as copies:
            made = bb._vision_inputs(canvas, sizes)
    assert copies.seen == [] and made["image_grid_thw"].device.type == "cuda"
