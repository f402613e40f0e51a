"""Adapter files: save -> load onto a fresh base model, every load error, overwrite safety, add_task."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct

import pytest
import torch
from conftest import llava_inputs, tiny_hf_clip, tiny_llava, tiny_open_clip, tiny_timm_vit
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.grow import freeze_old_rows
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES
from mtl_lora_vl.io.adapter_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEADS_WEIGHTS,
    AdapterFileError,
)
from mtl_lora_vl.io.tensor_files import sha256_file as _sha256

TASKS = ["vqa", "retrieval", "cls"]


def _randomize(model, scale=0.2):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * scale)


def _fresh(build, seed=0):
    """The same base model every time (same seed), built from its config like on another machine."""
    torch.manual_seed(seed)
    return build().eval()


def _oc_run(m, inp):
    return torch.cat([m.encode_image(inp[0]), m.encode_text(inp[1])], dim=1)


def _hf_run(m, inp):
    def feat(x):
        return x if isinstance(x, torch.Tensor) else x.pooler_output

    return torch.cat([feat(m.get_image_features(pixel_values=inp[0])), feat(m.get_text_features(input_ids=inp[1]))], 1)


def _llava_run(m, inp):
    return m(**inp).logits


FAMILIES = {
    "open_clip": (tiny_open_clip, lambda: (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12))), _oc_run),
    "hf_clip": (tiny_hf_clip, lambda: (torch.randn(2, 3, 32, 32), torch.randint(0, 60, (2, 10))), _hf_run),
    "llava": (tiny_llava, lambda: llava_inputs(2), _llava_run),
    "timm": (tiny_timm_vit, lambda: torch.randn(2, 3, 32, 32), lambda m, x: m(x)),
}


def _outputs(model, run, inp, tasks):
    out = {}
    with torch.no_grad():
        for t in tasks:
            with mlv.route(model, t):
                out[t] = run(model, inp)
    return out


def _trained(build, cfg=None):
    model = mlv.attach(_fresh(build), cfg or mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def oc_adapter(tmp_path_factory):
    """A saved open_clip adapter (with heads and a task spec), reused by the error tests."""
    torch.manual_seed(0)
    model = _trained(tiny_open_clip)
    heads = {"vqa": nn.Linear(32, 5), "retrieval": nn.Identity()}
    spec = tmp_path_factory.mktemp("spec") / "vqa.toml"
    spec.write_text('kind = "vqa"\n[data]\nsource = "builtin"\n')
    path = mlv.save_adapter(model, tmp_path_factory.mktemp("ad") / "adapter", heads=heads,
                            task_specs={"vqa": spec}, base={"backbone": "builtin", "pretrained": None})
    return path, model, heads


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite(path, tensors, fix_sha=True, name=ADAPTER_WEIGHTS):
    """Replace a safetensors file of an adapter directory, optionally updating its recorded sha256."""
    from safetensors.torch import save_file

    save_file(tensors, str(path / name))
    if fix_sha:
        _fix_sha(path, name)


def _fix_sha(path, name=ADAPTER_WEIGHTS):
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["files"][name] = _sha256(path / name)
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_on_fresh_base_gives_identical_outputs_for_every_task(family, tmp_path):
    build, inputs, run = FAMILIES[family]
    model = _trained(build)
    heads = {"vqa": nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), "cls": nn.Identity()}
    _randomize(heads["vqa"])
    with torch.no_grad():
        heads["vqa"][0].weight.add_(1.0)
    inp = inputs()
    ref = _outputs(model, run, inp, TASKS)
    path = mlv.save_adapter(model, tmp_path / "adapter", heads=heads)
    assert sorted(p.name for p in path.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEADS_WEIGHTS])

    fresh = _fresh(build)
    new_heads = {"vqa": nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), "cls": nn.Identity()}
    loaded = mlv.load_adapter(fresh, path, heads=new_heads)
    assert loaded is fresh and loaded._mtl_lora.config.tasks == TASKS
    got = _outputs(loaded, run, inp, TASKS)
    for t in TASKS:
        assert torch.equal(got[t], ref[t]), t
    for k, v in heads["vqa"].state_dict().items():
        assert torch.equal(new_heads["vqa"].state_dict()[k], v)
    doc = mlv.read_adapter_config(path)
    assert doc["base_model"]["family"] == loaded._mtl_lora.family
    assert doc["heads"] == {"vqa": ["0.bias", "0.weight", "1.bias", "1.weight"], "cls": []}


def test_adapter_file_layout_and_names(oc_adapter):
    from safetensors import safe_open

    path, model, _ = oc_adapter
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    assert doc["format"] == "mtl-lora-vl-adapter" and doc["package_version"] == mlv.__version__
    assert doc["base_model"]["class"] == "open_clip.model.CLIP"
    assert doc["base_model"]["projections"]["visual.transformer.resblocks.0.attn.in_proj"] == [96, 32]
    assert doc["base"] == {"backbone": "builtin", "pretrained": None}
    assert set(doc["files"]) == {ADAPTER_WEIGHTS, HEADS_WEIGHTS, "tasks/vqa.toml"}
    assert (path / "tasks" / "vqa.toml").read_text().startswith('kind = "vqa"')
    with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as f:
        keys = set(f.keys())
        assert tuple(f.get_slice("transformer.resblocks.1.mlp.c_fc.lora_B").get_shape()) == (2, 128, 4)
    assert keys == {n for n, _ in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}
    with safe_open(str(path / HEADS_WEIGHTS), "pt") as f:
        assert set(f.keys()) == {"vqa.weight", "vqa.bias"}
    assert all(p.suffix in (".json", ".toml", ".safetensors") for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("method", ["task_lora", "moe_lora", "multi_lora", "lora"])
def test_baseline_methods_round_trip(method, tmp_path):
    model = _trained(tiny_open_clip, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, method=method,
                                                       lambda_type="diagonal"))
    inp = (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12)))
    ref = _outputs(model, _oc_run, inp, TASKS)
    loaded = mlv.load_adapter(_fresh(tiny_open_clip), mlv.save_adapter(model, tmp_path / "a"))
    got = _outputs(loaded, _oc_run, inp, TASKS)
    assert all(torch.equal(got[t], ref[t]) for t in TASKS)


# ---------------------------------------------------------------------------------------------- load errors


def _untouched(model):
    return getattr(model, "_mtl_lora", None) is None and not any(p.requires_grad is False for p in model.parameters())


def test_another_family_or_class_is_refused(oc_adapter):
    path = oc_adapter[0]
    hf = tiny_hf_clip()
    with pytest.raises(AdapterFileError, match=r"made for a model of family open_clip "
                                               r"\(open_clip.model.CLIP\).*hf_clip"):
        mlv.load_adapter(hf, path)
    assert _untouched(hf)
    custom = tiny_open_clip("custom")
    with pytest.raises(AdapterFileError, match=r"made for class open_clip.model.CLIP.*CustomTextCLIP"):
        mlv.load_adapter(custom, path)
    assert _untouched(custom)


def test_fingerprint_mismatch_names_the_projections(oc_adapter):
    import open_clip

    path = oc_adapter[0]
    vision = dict(image_size=32, layers=3, width=32, patch_size=8, head_width=16)
    text = dict(context_length=12, vocab_size=64, width=48, heads=2, layers=2)
    other = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    with pytest.raises(AdapterFileError) as e:
        mlv.load_adapter(other, path)
    msg = str(e.value)
    assert "fingerprint mismatch" in msg
    assert "only in this model: visual.transformer.resblocks.2.attn.in_proj" in msg
    assert "transformer.resblocks.0.attn.in_proj: (96, 32) in the file vs (144, 48) here" in msg
    assert _untouched(other)


def test_already_adapted_model_is_refused(oc_adapter):
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    with pytest.raises(AdapterFileError, match="already has MTL-LoRA adapters; pass a freshly built base model"):
        mlv.load_adapter(model, oc_adapter[0])

    class Holder:
        model = tiny_open_clip()

    with pytest.raises(TypeError, match=r"must be an nn.Module, got Holder \(a Backbone: pass backbone.model\)"):
        mlv.load_adapter(Holder(), oc_adapter[0])


def test_missing_unexpected_and_misshapen_tensors_are_named(oc_adapter, tmp_path):
    from safetensors.torch import load_file

    src = oc_adapter[0]
    tensors = load_file(str(src / ADAPTER_WEIGHTS))
    name = "visual.transformer.resblocks.1.mlp.c_proj.lora_A"

    p = _copy(src, tmp_path / "missing")
    _rewrite(p, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(AdapterFileError, match=rf"missing adapter tensor\(s\) {name}"):
        mlv.load_adapter(_fresh(tiny_open_clip), p)

    p = _copy(src, tmp_path / "unexpected")
    _rewrite(p, {**tensors, "visual.extra.lora_A": torch.zeros(2, 2)})
    with pytest.raises(AdapterFileError, match=r"unexpected adapter tensor\(s\) visual.extra.lora_A"):
        mlv.load_adapter(_fresh(tiny_open_clip), p)

    p = _copy(src, tmp_path / "shape")
    _rewrite(p, {**tensors, name: torch.zeros(4, 64)})
    fresh = _fresh(tiny_open_clip)
    with pytest.raises(AdapterFileError, match=r"shape mismatch in module visual.transformer.resblocks.1.mlp.c_proj: "
                                               rf"{name} is \(4, 64\) in the file but the model expects \(4, 128\)"):
        mlv.load_adapter(fresh, p)
    assert _untouched(fresh)


def test_truncated_file_is_refused(oc_adapter, tmp_path):
    p = _copy(oc_adapter[0], tmp_path / "cut")
    data = (p / ADAPTER_WEIGHTS).read_bytes()
    (p / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])
    fresh = tiny_open_clip()
    with pytest.raises(AdapterFileError, match=r"mtl_lora_model.safetensors: sha256 does not match .* truncated"):
        mlv.load_adapter(fresh, p)
    assert _untouched(fresh)
    _fix_sha(p)  # even with a matching checksum the cut file is refused, by its header
    with pytest.raises(AdapterFileError, match="unreadable safetensors"):
        mlv.load_adapter(tiny_open_clip(), p)


def test_header_edited_by_hand_is_refused(oc_adapter, tmp_path):
    p = _copy(oc_adapter[0], tmp_path / "edited")
    data = bytearray((p / ADAPTER_WEIGHTS).read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    header = json.loads(bytes(data[8:8 + n]))
    key = "transformer.resblocks.0.mlp.c_fc.lora_A"
    header[key]["shape"] = [8, 32]  # claims twice the data its offsets hold
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    data[8:8 + n] = text
    (p / ADAPTER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="sha256 does not match"):
        mlv.load_adapter(tiny_open_clip(), p)
    _fix_sha(p)
    with pytest.raises(AdapterFileError, match=r"mtl_lora_model.safetensors: unreadable safetensors header"):
        mlv.load_adapter(tiny_open_clip(), p)


def test_config_record_edited_by_hand_is_refused(oc_adapter, tmp_path):
    """Every file of an adapter is checked against mtl_lora_config.json, except that file itself: swapping the
    order of its tasks made one task load the other's Lambda_t / w_t rows, silently (alpha, temperature too)."""
    p = _copy(oc_adapter[0], tmp_path / "config")
    doc = json.loads((p / ADAPTER_CONFIG).read_text())
    (p / ADAPTER_CONFIG).write_text(json.dumps(doc))   # re-formatted, the same record: it loads
    mlv.load_adapter(_fresh(tiny_open_clip), p)
    assert isinstance(doc["config"]["alpha"], float) and doc["config"]["alpha"].is_integer()
    same = {**doc, "config": {**doc["config"], "alpha": int(doc["config"]["alpha"])}}   # 16.0 -> 16, as jq writes
    (p / ADAPTER_CONFIG).write_text(json.dumps(same))
    mlv.load_adapter(_fresh(tiny_open_clip), p)
    for key, value in (("tasks", doc["config"]["tasks"][::-1]), ("alpha", doc["config"]["alpha"] * 2)):
        edited = {**doc, "config": {**doc["config"], key: value}}
        (p / ADAPTER_CONFIG).write_text(json.dumps(edited, indent=2))
        fresh = _fresh(tiny_open_clip)
        with pytest.raises(AdapterFileError, match=r"mtl_lora_config.json: its 'config' .* was edited after saving"):
            mlv.load_adapter(fresh, p)
        assert _untouched(fresh)


def test_tampered_task_spec_and_missing_files(oc_adapter, tmp_path):
    p = _copy(oc_adapter[0], tmp_path / "spec")
    (p / "tasks" / "vqa.toml").write_text('kind = "vqa"\n[data]\nsource = "builtin"\nseed = 3\n')
    with pytest.raises(AdapterFileError, match=r"tasks/vqa.toml: sha256 does not match"):
        mlv.load_adapter(tiny_open_clip(), p)
    (p / "tasks" / "vqa.toml").unlink()
    with pytest.raises(AdapterFileError, match=r"tasks/vqa.toml: missing"):
        mlv.load_adapter(tiny_open_clip(), p)
    with pytest.raises(AdapterFileError, match="no mtl_lora_config.json"):
        mlv.load_adapter(tiny_open_clip(), tmp_path)
    with pytest.raises(AdapterFileError, match="does not exist"):
        mlv.load_adapter(tiny_open_clip(), tmp_path / "nothing")
    bad = _copy(oc_adapter[0], tmp_path / "badjson")
    (bad / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        mlv.load_adapter(tiny_open_clip(), bad)
    bom = _copy(oc_adapter[0], tmp_path / "bom")   # saved again by an editor that adds a byte-order mark
    (bom / ADAPTER_CONFIG).write_bytes(b"\xef\xbb\xbf" + (bom / ADAPTER_CONFIG).read_bytes())
    mlv.load_adapter(_fresh(tiny_open_clip), bom)
    for key, value, says in (("task_specs", ["x"], "the field 'task_specs' is not an object"),
                             ("heads", ["vqa"], "the field 'heads' is not an object"),
                             ("weight_samples", {"x": 1}, "weight_samples is not an object of value lists")):
        edited = _copy(oc_adapter[0], tmp_path / key)
        doc = json.loads((edited / ADAPTER_CONFIG).read_text())
        (doc["base_model"] if key == "weight_samples" else doc)[key] = value
        (edited / ADAPTER_CONFIG).write_text(json.dumps(doc))
        with pytest.raises(AdapterFileError, match=says):   # were AttributeError / TypeError tracebacks
            mlv.load_adapter(_fresh(tiny_open_clip), edited)


def test_other_weights_of_the_same_architecture_are_refused(oc_adapter, tmp_path):
    """Names and shapes match, the weights do not (another seed, a re-run pretraining, another checkpoint at the
    recorded path): it loaded silently and gave other outputs. bf16 storage of the right weights still loads."""
    path = oc_adapter[0]
    samples = json.loads((path / ADAPTER_CONFIG).read_text())["base_model"]["weight_samples"]
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in samples and len(samples) == 62   # every parameter
    from mtl_lora_vl.io.identity import model_identity

    model = oc_adapter[1]
    mlv.merge(model, "vqa")  # a merged model records the weights under the merge
    try:
        assert model_identity(model)["weight_samples"] == samples
    finally:
        mlv.unmerge(model)
    with pytest.raises(AdapterFileError, match=r"trained on other weights of this architecture: \d+ of 62 sampled base "
                                               r"weights differ .*check_base_weights=False to the Python function "
                                               r".*the commands have no such switch"):
        mlv.load_adapter(_fresh(tiny_open_clip, seed=1), path)
    mlv.load_adapter(_fresh(tiny_open_clip, seed=1), path, check_base_weights=False)  # asked for
    mlv.MTLLoRAModel.from_pretrained(_fresh(tiny_open_clip, seed=1), path, check_base_weights=False)   # as advised
    mlv.load_adapter(_fresh(tiny_open_clip).to(torch.bfloat16), path)  # the same weights, rounded: fine
    nudged = _fresh(tiny_open_clip)
    with torch.no_grad():  # one weight of sixteen changed
        nudged.visual.transformer.resblocks[0].attn.in_proj_weight.mul_(1.1)
    with pytest.raises(AdapterFileError, match="1 of 62 sampled base weights differ"):
        mlv.load_adapter(nudged, path)
    old = _copy(path, tmp_path / "old")  # a file written before samples were recorded: not checked
    doc = json.loads((old / ADAPTER_CONFIG).read_text())
    del doc["base_model"]["weight_samples"]
    (old / ADAPTER_CONFIG).write_text(json.dumps(doc))
    mlv.load_adapter(_fresh(tiny_open_clip, seed=1), old)


def test_head_mismatch_is_named(oc_adapter):
    path = oc_adapter[0]
    with pytest.raises(AdapterFileError, match=r"shape mismatch in the head of task 'vqa': vqa.weight is \(5, 32\)"):
        mlv.load_adapter(_fresh(tiny_open_clip), path, heads={"vqa": nn.Linear(32, 7)})
    with pytest.raises(AdapterFileError, match=r"has no head for task 'cls'"):
        mlv.load_adapter(_fresh(tiny_open_clip), path, heads={"cls": nn.Linear(32, 5)})
    with pytest.raises(AdapterFileError, match=r"missing \['bias'\]|unexpected \['vqa.bias'\]"):
        mlv.load_adapter(_fresh(tiny_open_clip), path, heads={"vqa": nn.Linear(32, 5, bias=False)})


# ---------------------------------------------------------------------------------------------- writing safely


def test_refuses_to_overwrite_and_keeps_the_old_directory(oc_adapter, tmp_path, monkeypatch):
    import mtl_lora_vl.io.adapter_files as aio

    model = oc_adapter[1]
    path = mlv.save_adapter(model, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass overwrite=True"):
        mlv.save_adapter(model, path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        mlv.save_adapter(model, tmp_path / "file", overwrite=True)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(aio, "save_tensors", boom)
    with pytest.raises(OSError, match="disk full"):
        mlv.save_adapter(model, path, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "file"]  # no temporary left behind
    (tmp_path / "empty").mkdir()
    mlv.save_adapter(model, tmp_path / "empty")  # an empty directory is fine
    mlv.save_adapter(model, path, overwrite=True, heads={"vqa": nn.Linear(2, 2)})
    assert mlv.read_adapter_config(path)["heads"] == {"vqa": ["bias", "weight"]}


def test_overwrite_refuses_to_delete_what_the_new_adapter_records(oc_adapter, tmp_path):
    """overwrite=True replaced a folder holding the base weights or a task's data folder that the new adapter
    records (saved, then gone), or a training run's checkpoint; each is refused and left in place."""
    model = oc_adapter[1]
    work = tmp_path / "work"
    work.mkdir()
    torch.save({}, work / "base.pt")
    (work / "data").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    for kw, says in (({"base": {"pretrained": str(work / "base.pt")}}, r"holds the base weights .*base\.pt"),
                     ({"data_roots": {"vqa": work / "data"}}, r"holds the data folder of task 'vqa' .*data")):
        with pytest.raises(FileExistsError, match=f"save_adapter: .*work {says}, which the adapter records"):
            mlv.save_adapter(model, work, overwrite=True, **kw)
    with pytest.raises(FileExistsError, match=r"is a training run directory \(its checkpoint would be deleted\)"):
        mlv.save_adapter(model, run, overwrite=True)
    assert (work / "base.pt").is_file() and (work / "data").is_dir() and (run / "checkpoint.pt").is_file()
    mlv.save_adapter(model, work, overwrite=True, data_roots={"vqa": tmp_path})   # recorded elsewhere: replaced
    assert not (work / "base.pt").exists()


def test_load_adapter_heads_that_are_not_modules_are_named(oc_adapter):
    """A head class, None or a list of heads failed inside load_state_dict with Python's own errors."""
    for heads in ({"vqa": nn.Linear}, {"vqa": None}):
        with pytest.raises(TypeError, match=r"load_adapter: heads must be nn.Modules .*not for \['vqa'\]"):
            mlv.load_adapter(_fresh(tiny_open_clip), oc_adapter[0], heads=heads)
    with pytest.raises(TypeError, match=r"load_adapter: heads must map task -> nn.Module, got list"):
        mlv.load_adapter(_fresh(tiny_open_clip), oc_adapter[0], heads=[nn.Linear(32, 5)])


def test_a_task_name_with_a_slash_saves_and_loads_but_not_with_its_spec(tmp_path):
    """'coco/caption' names no file in a plain save (it loads back), but tasks/coco/caption.toml failed with a
    FileNotFoundError after training; that save is refused before anything is written."""
    from mtl_lora_vl.tasks import load_spec

    model = _trained(tiny_open_clip, mlv.MTLLoRAConfig(tasks=["coco/caption", "vqa"], r=2))
    mlv.load_adapter(_fresh(tiny_open_clip), mlv.save_adapter(model, tmp_path / "plain"))
    with pytest.raises(ValueError, match=r"task name 'coco/caption' contains '/'.*save without task_specs="):
        mlv.save_adapter(model, tmp_path / "specs", task_specs={"coco/caption": load_spec("captioning")})
    assert not (tmp_path / "specs").exists()


def test_task_names_that_differ_only_in_case_are_not_saved_with_their_files(tmp_path):
    """tasks/VQA.toml and tasks/vqa.toml are one file on macOS and Windows: one task's spec replaced the other's."""
    model = mlv.attach(_fresh(tiny_open_clip), mlv.MTLLoRAConfig(tasks=["VQA", "vqa"], r=2))
    spec = tmp_path / "vqa.toml"
    spec.write_text('kind = "vqa"\n')
    with pytest.raises(ValueError, match=r"task names 'VQA', 'vqa' differ only in case"):
        mlv.save_adapter(model, tmp_path / "out", task_specs={"VQA": spec, "vqa": spec})
    assert not (tmp_path / "out").exists()
    # no files named by the tasks: saved
    mlv.load_adapter(_fresh(tiny_open_clip), mlv.save_adapter(model, tmp_path / "plain"))


def test_save_argument_errors(tmp_path):
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    spec = tmp_path / "x.toml"
    spec.write_text('name = "other"\nkind = "vqa"\n')
    with pytest.raises(ValueError, match="names its task 'other', but it is given for task 'vqa'"):
        mlv.save_adapter(model, tmp_path / "a", task_specs={"vqa": spec})
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"heads names task 'caption' that"):
        mlv.save_adapter(model, "/nonexistent/never", heads={"caption": nn.Identity()})
    with pytest.raises(FileNotFoundError, match="task spec of 'vqa' not found"):
        mlv.save_adapter(model, "/nonexistent/never", task_specs={"vqa": "/no/such.toml"})
    with pytest.raises(mlv.RoutingError, match="has no MTL-LoRA adapters"):
        mlv.save_adapter(tiny_open_clip(), "/nonexistent/never")
    from mtl_lora_vl.tasks import load_spec
    vqa = load_spec("vqa")   # a TaskSpec saves its text as read
    with pytest.raises(ValueError, match="names its task 'vqa', but it is given for task 'cls'"):
        mlv.save_adapter(model, tmp_path / "a", task_specs={"cls": vqa})
    with pytest.raises(ValueError, match="was not read from a file"):
        mlv.save_adapter(model, tmp_path / "a", task_specs={"vqa": dataclasses.replace(vqa, source_text=None)})
    mlv.save_adapter(model, tmp_path / "a", task_specs={"vqa": vqa})
    assert (tmp_path / "a" / "tasks" / "vqa.toml").read_text() == vqa.source_file.read_text()


# ---------------------------------------------------------------------------------------------- add_task


def _train_steps(model, head, steps=3, ids=None):
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=0.05)  # default weight_decay=0.01: old rows must survive it too
    freeze_old_rows(model, opt)  # a no-op for a model that never grew
    img, txt = torch.randn(4, 3, 32, 32), torch.randint(1, 60, (4, 12))
    for _ in range(steps):
        with mlv.route(model, ids):
            emb = model.encode_image(img)
            loss = (emb @ model.encode_text(txt).T).square().mean() + head(emb).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("method,lambda_type", [("mtl_lora", "full"), ("mtl_lora", "diagonal"),
                                                ("task_lora", "full"), ("moe_lora", "full"), ("lora", "full")])
def test_add_task_trains_only_the_new_task_and_keeps_the_others_bit_identical(method, lambda_type, tmp_path):
    cfg = mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=4, n_up=3, method=method, lambda_type=lambda_type)
    model = _trained(tiny_open_clip, cfg)
    inp = (torch.randn(3, 3, 32, 32), torch.randint(1, 60, (3, 12)))
    ref = _outputs(model, _oc_run, inp, ["vqa", "retrieval"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}

    n_train = mlv.add_task(model, "count").trainable
    assert model._mtl_lora.config.tasks == ["vqa", "retrieval", "count"]
    banks = model._mtl_lora.layers.values()
    per_bank = {("mtl_lora", "full"): lambda b: 4 * 4 + 3, ("mtl_lora", "diagonal"): lambda b: 4 + 3,
                ("task_lora", "full"): lambda b: 4 * b.d_in + b.lora_B.shape[1] * 4,
                ("moe_lora", "full"): lambda b: 3, ("lora", "full"): lambda b: 0}[(method, lambda_type)]
    assert n_train == sum(per_bank(b) for b in banks)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.rpartition(".")[2] in {"lora_lambda", "lora_w", "lora_A", "lora_B"} for n in trainable)
    if method == "mtl_lora":
        assert not any(n.endswith(("lora_A", "lora_B")) for n in trainable)
    new_start = _outputs(model, _oc_run, inp, ["count"])["count"]
    with torch.no_grad(), mlv.disabled(model):
        base = _oc_run(model, inp)
    # as add_task's docstring says: only task_lora's new task starts as the base (B_t = 0); the others
    # start from the trained shared B_i (mixed by the new w_t for mtl_lora and moe_lora)
    assert torch.equal(new_start, base) == (method == "task_lora")

    head = nn.Linear(32, 2)
    _train_steps(model, head, ids=torch.tensor([0, 1, 2, 2]))  # old tasks in the batch too
    got = _outputs(model, _oc_run, inp, ["vqa", "retrieval"])
    for t in ("vqa", "retrieval"):
        assert torch.equal(got[t], ref[t]), t
    if n_train:
        assert not torch.equal(_outputs(model, _oc_run, inp, ["count"])["count"], new_start)
    path = mlv.save_adapter(model, tmp_path / "extended")
    from safetensors.torch import load_file

    saved = load_file(str(path / ADAPTER_WEIGHTS))
    for n, old in before.items():
        k = old.shape[0] if n.rpartition(".")[2] in {"lora_lambda", "lora_w"} or method == "task_lora" else None
        assert torch.equal(saved[n][:k] if k else saved[n], old), n
    loaded = mlv.load_adapter(_fresh(tiny_open_clip), path)
    again = _outputs(loaded, _oc_run, inp, ["vqa", "retrieval", "count"])
    assert torch.equal(again["vqa"], ref["vqa"]) and torch.equal(again["count"],
                                                                 _outputs(model, _oc_run, inp, ["count"])["count"])


def test_add_task_names_projections_whose_up_projections_never_trained(tmp_path, caplog):
    """A CoCa adapter trained on contrastive tasks leaves the text decoder's B_i at their zero init; add_task freezes
    every B_i, so the new task's Λ_t, w_t there get zero gradients: the decoder was never adapted, silently, and
    those values were counted as training (helper 138)."""
    from vl_tiny import tiny_backbone

    torch.manual_seed(0)
    bb = tiny_backbone(tmp_path, coca=True)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=8, n_up=3))
    info = bb.model._mtl_lora
    with torch.no_grad():   # what training on vqa and retrieval leaves: B_i trained except in the unused decoder
        for path, bank in info.layers.items():
            if not path.startswith("text_decoder"):
                bank.lora_B.normal_(std=0.1)
    decoder = sorted(p for p in info.layers if p.startswith("text_decoder"))
    assert decoder
    with caplog.at_level("WARNING", logger="mtl_lora_vl"):
        added = mlv.add_task(bb.model, "captioning")
    assert sorted(added.idle) == decoder
    assert added.trainable == sum(8 * 8 + 3 for p in info.layers if p not in decoder)
    assert f"{len(decoder)} of {len(info.layers)} adapted projections (e.g. {added.idle[0]})" in caplog.text
    assert "cannot adapt them" in caplog.text
    bb.model.train()   # and that is so: the new task's gradient through the decoder is exactly zero
    with mlv.route(bb.model, "captioning"):
        bb.caption_logits(torch.randn(2, 3, bb.image_size, bb.image_size),
                          bb.tokenizer(["a red cube", "two blue spheres"])).float().pow(2).mean().backward()
    grads = [info.layers[p].lora_lambda.grad for p in decoder]
    assert all(g is not None and not g.any() for g in grads)


def test_add_task_errors_and_merge_after_training():
    cfg = mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=4)
    model = _trained(tiny_open_clip, cfg)
    with pytest.raises(ValueError, match="already has a task 'vqa'"):
        mlv.add_task(model, "vqa")
    with pytest.raises(ValueError, match="may not contain '.'"):  # heads are stored under "<task>.<param>"
        mlv.add_task(model, "vqa.hard")
    mlv.add_task(model, "extra")
    assert cfg.tasks == ["vqa", "retrieval"]  # the caller's config is not the model's: reusable for a fresh attach
    assert model._mtl_lora.config.tasks == ["vqa", "retrieval", "extra"]
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), mlv.route(model, "vqa"):
        ref = model.encode_image(img)
    mlv.add_task(model, "new")
    bank = model._mtl_lora.layers["visual.transformer.resblocks.0.mlp.c_fc"]
    with torch.no_grad():
        bank.lora_lambda.mul_(0.5)  # what weight decay does to every row; the frozen rows come back
    mlv.merge(model, "vqa")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="merged into the weights; call mtl_lora_vl.unmerge"):
        mlv.add_task(model, "third")
    mlv.unmerge(model)


# ---------------------------------------------------------------------------------------------- names, PEFT, frozen


def test_native_directory_cannot_be_taken_for_a_peft_adapter(tmp_path):
    from peft import PeftConfig, PeftModel

    path = mlv.save_adapter(_trained(tiny_hf_clip), tmp_path / "native")
    names = {p.name for p in path.iterdir()}
    assert {"mtl_lora_config.json", "mtl_lora_model.safetensors"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftConfig.from_pretrained(str(path))
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftModel.from_pretrained(_fresh(tiny_hf_clip), str(path))
    assert mlv.io.is_adapter_dir(path) and mlv.read_adapter_config(path)["format_version"] == 2


def test_load_adapter_refuses_a_peft_directory_and_says_what_it_is(tmp_path):
    model = _trained(tiny_hf_clip)
    one = mlv.export_lora(model, "vqa", tmp_path / "peft_vqa")
    fresh = _fresh(tiny_hf_clip)
    with pytest.raises(AdapterFileError, match=r"PEFT adapter directory \(adapter_config.json with peft_type "
                                               r"'LORA'\), e.g. one task written by mtl_lora_vl.export_lora; load "
                                               r"it with peft.PeftModel.from_pretrained") as e:
        mlv.load_adapter(fresh, one)
    assert "mtl_lora_config.json" in str(e.value) and "every task" in str(e.value)
    several = mlv.export_lora(model, ["vqa", "cls"], tmp_path / "peft_all")
    with pytest.raises(AdapterFileError, match=r"PEFT adapters in subfolders \(cls, vqa\).*adapter_name=<task>"):
        mlv.load_adapter(fresh, several)
    with pytest.raises(AdapterFileError, match="PEFT adapter directory"):
        mlv.read_adapter_config(several / "cls")
    assert _untouched(fresh) and not mlv.io.is_adapter_dir(one)


def test_load_adapter_names_an_export_of_this_package_and_the_fix(tmp_path):
    """A plain-LoRA or merged export given where the adapter is expected (eval --adapter OUT) was 'not an adapter
    directory written by mtl_lora_vl.save_adapter', naming neither what it is nor what to give instead."""
    model = _trained(tiny_open_clip)
    one = mlv.export_lora(model, "vqa", tmp_path / "plain_vqa")
    several = mlv.export_lora(model, ["vqa", "cls"], tmp_path / "plain_all")
    fresh = _fresh(tiny_open_clip)
    for path, what in ((one, r"plain, task 'vqa'"), (several, r"plain, tasks 'vqa', 'cls'"),
                      (several / "cls", r"plain, task 'cls'"), (tmp_path / "cli", r"plain, task 'cls' in cls/; "
                                                                                 r"plain, task 'vqa' in vqa/")):
        if path.name == "cli":   # (`export --task vqa,cls` writes a record in each task's folder only)
            shutil.copytree(several, path)
            (path / "mtl_lora_export.json").unlink()
        with pytest.raises(AdapterFileError, match=rf"this is an export written by `mtl-lora-vl export` \({what}\), "
                                                   r"not an adapter directory.*Give the adapter it was exported from"):
            mlv.load_adapter(fresh, path)
    assert _untouched(fresh)


def test_run_directory_is_named_and_found(tmp_path):
    run = tmp_path / "run"
    mlv.save_adapter(_trained(tiny_open_clip), run / "adapter")
    with pytest.raises(AdapterFileError, match=r"looks like a training run directory, its adapter is .*run/adapter"):
        mlv.load_adapter(tiny_open_clip(), run)
    assert mlv.io.find_adapter_dir(run) == run / "adapter"
    assert mlv.io.find_adapter_dir(run / "adapter") == run / "adapter"
    assert mlv.io.find_adapter_dir(tmp_path) == tmp_path  # neither: unchanged, loading says why


def _as_format_1(path):
    """Rewrite a saved adapter directory as 0.1.0 wrote it: PEFT's file names, format_version 1."""
    from mtl_lora_vl.io import LEGACY_ADAPTER_CONFIG, LEGACY_ADAPTER_WEIGHTS

    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    (path / ADAPTER_WEIGHTS).rename(path / LEGACY_ADAPTER_WEIGHTS)
    doc["files"][LEGACY_ADAPTER_WEIGHTS] = doc["files"].pop(ADAPTER_WEIGHTS)
    doc["format_version"] = 1
    (path / ADAPTER_CONFIG).unlink()
    (path / LEGACY_ADAPTER_CONFIG).write_text(json.dumps(doc))
    return path


def test_format_1_directory_with_peft_file_names_still_loads(tmp_path):
    model = _trained(tiny_hf_clip)
    inp = FAMILIES["hf_clip"][1]()
    ref = _outputs(model, _hf_run, inp, TASKS)
    path = _as_format_1(mlv.save_adapter(model, tmp_path / "old", heads={"vqa": nn.Linear(4, 2)}))
    assert mlv.io.is_adapter_dir(path) and mlv.read_adapter_config(path)["format_version"] == 1
    head = nn.Linear(4, 2)
    loaded = mlv.load_adapter(_fresh(tiny_hf_clip), path, heads={"vqa": head})
    got = _outputs(loaded, _hf_run, inp, TASKS)
    assert all(torch.equal(got[t], ref[t]) for t in TASKS)
    (path / "adapter_model.safetensors").write_bytes(b"broken")
    with pytest.raises(AdapterFileError, match=r"adapter_model.safetensors: sha256 does not match adapter_config.json"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


def test_load_adapter_is_frozen_for_inference_unless_trainable(oc_adapter):
    path = oc_adapter[0]
    head = nn.Linear(32, 5)
    frozen = mlv.load_adapter(_fresh(tiny_open_clip).train(), path, heads={"vqa": head})
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert not any(p.requires_grad for p in head.parameters()) and not head.training

    head = nn.Linear(32, 5)
    model = mlv.load_adapter(_fresh(tiny_open_clip).train(), path, heads={"vqa": head}, is_trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}
    assert model.training and head.weight.requires_grad


def test_an_adapter_saved_under_older_default_targets_loads_on_its_own_projections(tmp_path, monkeypatch):
    """Default targets are resolved when an adapter loads. Those of the llava family changed (the vision layers
    after vision_feature_layer left out): an adapter saved before, on a LLaVA-1.5-style model, was refused as
    made for another architecture. It loads on the projections it was saved with, and computes as saved."""
    import dataclasses

    from mtl_lora_vl import families

    def llava15():
        torch.manual_seed(0)
        m = tiny_llava().eval()
        m.config.vision_feature_layer = -2
        return m

    old = tuple(dataclasses.replace(f, unused=None) if f.name == "llava" else f for f in families.FAMILIES)
    with monkeypatch.context() as m:
        m.setattr(families, "FAMILIES", old)   # the defaults as they were
        model = mlv.attach(llava15(), mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
        _randomize(model)
        path = mlv.save_adapter(model, tmp_path / "ad")
    inp = llava_inputs(2)
    want = _outputs(model, _llava_run, inp, TASKS)
    loaded = mlv.load_adapter(llava15(), path)
    got = _outputs(loaded, _llava_run, inp, TASKS)
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t], atol=1e-5, rtol=1e-5)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    other = LlavaForConditionalGeneration(LlavaConfig(   # another size of the same class is still refused
        vision_config=CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64),
        image_token_index=95, vision_feature_layer=-2))
    with pytest.raises(AdapterFileError, match="fingerprint mismatch"):
        mlv.load_adapter(other, path)


def test_a_spec_this_version_cannot_read_is_refused_at_save_and_skipped_without_heads(tmp_path):
    """A spec with a field the loader refuses was saved, and the adapter then did not load even with heads=False,
    whose message advised heads=False."""
    from mtl_lora_vl.backbones import load_backbone

    newer = tmp_path / "vqa.toml"
    newer.write_text('name = "vqa"\nkind = "vqa"\nfrom_a_newer_version = 1\n[data]\nsource = "builtin"\n')
    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2))
    with pytest.raises(ValueError, match=r"task spec of 'vqa' is not a valid task spec: .*'from_a_newer_version'"):
        mlv.save_adapter(bb.model, tmp_path / "a", task_specs={"vqa": newer})
    from mtl_lora_vl.tasks import load_spec

    path = mlv.save_adapter(bb.model, tmp_path / "a", task_specs={t: load_spec(t) for t in ("vqa", "retrieval")},
                            base={"backbone": "builtin"})
    (path / "tasks" / "vqa.toml").write_text(newer.read_text())   # as a newer version would write it
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["files"]["tasks/vqa.toml"] = _sha256(path / "tasks" / "vqa.toml")
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=r"the task spec of 'vqa' \(tasks/vqa.toml\) cannot be read"):
        bare = mlv.load_pretrained(path, heads=False)
    assert set(bare.specs) == {"retrieval"}
    with pytest.raises(AdapterFileError, match=r"cannot read the task spec of 'vqa' .*; load without heads"):
        mlv.load_pretrained(path)


def test_load_pretrained_says_which_saved_heads_it_cannot_rebuild(tmp_path):
    """A head is rebuilt by its task kind from the saved spec; saved without specs, the heads were dropped silently."""
    from mtl_lora_vl.backbones import load_backbone

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2))
    path = mlv.save_adapter(bb.model, tmp_path / "a", heads={"vqa": nn.Linear(4, 2)}, base={"backbone": "builtin"})
    with pytest.warns(UserWarning, match=r"heads of \['vqa'\] are saved but their task specs are not"):
        lp = mlv.load_pretrained(path)
    assert lp.heads == {}


def test_a_run_directory_that_has_not_finished_says_so(tmp_path):
    """--extend (or evaluation) of a stopped run said only "not an adapter directory written by save_adapter"."""
    from mtl_lora_vl.io.layout import adapter_layout

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(AdapterFileError, match=r"a training run directory without its adapter/.*--resume"):
        adapter_layout(tmp_path)


def test_an_adapter_saved_before_qkv_slices_chose_separate_q_k_v_layers_still_loads(tmp_path, caplog):
    """qkv_slices="qv" used to adapt k_proj too on Hugging Face models (it selected slices of packed projections
    only); such a file then failed to load as "made for another architecture"."""
    import json

    model = _trained(tiny_hf_clip)   # qkv_slices="qkv": what a "qv" file of the time holds
    path = mlv.save_adapter(model, tmp_path / "old")
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["config"]["qkv_slices"] = "qv"
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    from safetensors.torch import load_file  # a file of the time: its weights carry no config digest
    _rewrite(path, load_file(str(path / ADAPTER_WEIGHTS)))
    inp = FAMILIES["hf_clip"][1]()
    with caplog.at_level("WARNING"):
        loaded = mlv.load_adapter(_fresh(tiny_hf_clip), path)
    assert "saved before that setting applied to separate q/k/v layers" in caplog.text
    want, got = _outputs(model, _hf_run, inp, TASKS), _outputs(loaded, _hf_run, inp, TASKS)
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t])


# ---------------------------------------------------------------------------------------------- review 109


def test_a_missing_config_beside_the_adapter_weights_says_the_directory_is_incomplete(tmp_path):
    model = _trained(tiny_hf_clip)
    path = mlv.save_adapter(model, tmp_path / "adapter")
    (path / ADAPTER_CONFIG).unlink()
    with pytest.raises(AdapterFileError, match=rf"{ADAPTER_CONFIG} is missing.*{ADAPTER_WEIGHTS}.*copy"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


def test_hand_edited_projections_are_an_adapter_file_error(tmp_path):
    model = _trained(tiny_hf_clip)
    path = mlv.save_adapter(model, tmp_path / "adapter")
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["base_model"]["projections"] = {k: 5 for k in doc["base_model"]["projections"]}
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError, match="projections"):   # was: TypeError: 'int' object is not iterable
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


def test_other_weights_outside_the_adapted_layers_are_refused(tmp_path):
    """A base whose adapted projections match but whose other weights differ (embeddings, norms, LLaVA's projector,
    the LM head) loaded without a word, and its outputs are not the trained model's."""
    model = _trained(tiny_llava)
    path = mlv.save_adapter(model, tmp_path / "adapter")
    other = _fresh(tiny_llava)
    with torch.no_grad():
        for n, p in other.named_parameters():
            if "multi_modal_projector" in n:
                p.normal_()
    with pytest.raises(AdapterFileError, match="multi_modal_projector"):
        mlv.load_adapter(other, path)
    assert getattr(other, "_mtl_lora", None) is None
    mlv.load_adapter(other, path, check_base_weights=False)   # still loads when asked to


def test_load_adapter_onto_a_compiled_model_says_to_pass_the_original(tmp_path):
    path = mlv.save_adapter(_trained(tiny_hf_clip), tmp_path / "adapter")
    with pytest.raises((AdapterFileError, TypeError), match="_orig_mod"):
        mlv.load_adapter(torch.compile(_fresh(tiny_hf_clip)), path)


def test_saved_tensor_files_have_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes the metadata from a hash map whose order changes between processes, so an adapter re-saved
    with equal tensors got another sha256 (and an --extend run's resume refused its unchanged source adapter,
    helper 108): the metadata keys are written sorted, and the file still reads."""
    import struct

    from mtl_lora_vl.io.tensor_files import load_tensors, read_metadata, save_tensors

    meta = {k: str(i) for i, k in enumerate("qwertyu")}   # 7 keys: a hash map's order is sorted 1 time in 5040
    save_tensors({"a": torch.zeros(2), "b": torch.ones(3, dtype=torch.float16)}, tmp_path / "t.safetensors", meta)
    raw = (tmp_path / "t.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(header["__metadata__"]) == sorted(meta)
    assert read_metadata(tmp_path / "t.safetensors") == meta
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["b"], torch.ones(3, dtype=torch.float16))


# Hand edits and refusals (helper 123)
def _edited_adapter(tmp_path, edit):
    """An adapter of a tiny HF CLIP with one head, its config file then changed by ``edit`` (as by hand)."""
    model = mlv.attach(_fresh(tiny_hf_clip), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
    path = mlv.save_adapter(model, tmp_path / "ad", heads={"a": nn.Linear(16, 3)})
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    edit(doc)
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("value", [5, ["/data"], {"dir": "/data"}, ""])
def test_data_roots_values_that_are_not_folders_are_named_at_load(tmp_path, value):
    path = _edited_adapter(tmp_path, lambda d: d.__setitem__("data_roots", {"a": value}))
    with pytest.raises(AdapterFileError, match=r"data_roots.*'a'"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


@pytest.mark.parametrize("value", ["bf17", "auto", 16])
def test_a_recorded_base_dtype_that_is_not_a_dtype_is_named_at_load(tmp_path, value):
    path = _edited_adapter(tmp_path, lambda d: d.setdefault("base", {}).__setitem__("base_dtype", value))
    with pytest.raises(AdapterFileError, match=r"base\.base_dtype must be 'fp32', 'bf16' or 'fp16'"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


@pytest.mark.parametrize("sample", [["x"] * 4, [[1.0]] * 4, [None] * 4])
def test_weight_samples_that_are_not_numbers_are_an_adapter_file_error(tmp_path, sample):
    path = _edited_adapter(tmp_path, lambda d: d["base_model"]["weight_samples"].__setitem__("logit_scale", sample))
    with pytest.raises(AdapterFileError, match="weight_samples"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


def test_a_shortened_weight_sample_is_an_edit_not_other_weights(tmp_path):
    """It said "trained on other weights ... [2.6592, 2.6592] here, [2.6592, 2.6592] when it was saved" (helper 123)."""
    def shorten(doc):
        samples = doc["base_model"]["weight_samples"]
        key = max(samples, key=lambda k: len(samples[k]))
        samples[key] = samples[key][:-1]

    path = _edited_adapter(tmp_path, shorten)
    with pytest.raises(AdapterFileError, match=r"weight_samples\[.*\] holds \d+ values where the sample has \d+; "
                                               r"the file was edited by hand"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path)


def test_a_file_left_out_of_the_files_record_is_still_checked(tmp_path):
    from mtl_lora_vl.io.tensor_files import save_tensors

    path = _edited_adapter(tmp_path, lambda d: d["files"].pop("heads.safetensors"))
    save_tensors({"a.weight": torch.zeros(3, 16), "a.bias": torch.zeros(3)}, path / "heads.safetensors",
                 {"format": "mtl-lora-vl-adapter"})
    with pytest.raises(AdapterFileError, match="heads.safetensors"):
        mlv.load_adapter(_fresh(tiny_hf_clip), path, heads={"a": nn.Linear(16, 3)})


def test_the_refusal_says_that_overwrite_deletes_the_whole_folder(tmp_path):
    """PEFT's save_pretrained(DIR) writes its two files into DIR and leaves the rest; here overwrite=True replaces
    DIR whole. The refusal that tells the user to pass overwrite=True must say so and name what would go."""
    model = mlv.attach(_fresh(tiny_hf_clip), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for call in (lambda: mlv.export_lora(model, "a", out), lambda: mlv.save_adapter(model, out),
                 lambda: mlv.save_merged(model, "a", out)):
        with pytest.raises(FileExistsError, match=r"overwrite=True.*everything in it \(notes\.txt\) is deleted"):
            call()
    assert (out / "notes.txt").read_text() == "mine"


def test_an_adapter_saved_with_a_loss_weight_now_out_of_the_training_range_still_loads(tmp_path):
    """The loss_weight range (1e-12 to 1e6) is for training; an adapter saved when any finite weight was accepted
    (here 1e7) still loads with its heads, its spec read back as saved."""
    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import SpecError, load_spec

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2))
    path = mlv.save_adapter(bb.model, tmp_path / "a", task_specs={t: load_spec(t) for t in ("vqa", "retrieval")},
                            base={"backbone": "builtin"})
    spec = path / "tasks" / "vqa.toml"
    spec.write_text(spec.read_text().replace("loss_weight = 1.0", "loss_weight = 1e7"))
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["files"]["tasks/vqa.toml"] = _sha256(spec)
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="loss_weight"):
        load_spec(spec)   # to train on: refused
    assert mlv.load_pretrained(path, heads=False).specs["vqa"].loss_weight == 1e7


# ------------------------------------------------------------------ another depth of the same class (helper 162)
# An adapter from a 2-layer LLaVA loaded onto a 3-layer one was taken for "an adapter saved under older default
# targets": with the same leading weights it loaded silently (layer 2 without adapters), and otherwise it was
# refused as "other weights of this architecture".
def _llava_of_depth(layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=95,
                                                     vision_feature_layer=-1,
                                                     vision_feature_select_strategy="default"))


@pytest.fixture
def two_layer_adapter(tmp_path):
    torch.manual_seed(0)
    base = _llava_of_depth(2)
    shared = {k: v.clone() for k, v in base.state_dict().items()}
    model = mlv.attach(base, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
    return mlv.save_adapter(model, tmp_path / "adapter"), shared


def _deeper(shared):
    """A 3-layer LLaVA whose first two layers (and everything else) hold the 2-layer model's weights."""
    torch.manual_seed(1)
    deeper = _llava_of_depth(3)
    missing, unexpected = deeper.load_state_dict(shared, strict=False)
    assert not unexpected and all(".layers.2." in k for k in missing)
    return deeper


def test_default_check_refuses_a_deeper_base_with_the_same_leading_weights(two_layer_adapter):
    path, shared = two_layer_adapter
    with pytest.raises(mlv.AdapterFileError, match="layers.2"):   # names what this model has that the file has not
        mlv.load_adapter(_deeper(shared), path)


def test_check_base_weights_false_still_refuses_another_architecture(two_layer_adapter):
    """README: ``check_base_weights=False`` loads onto *other weights* on purpose -- not onto another architecture,
    whose third layer would silently run without adapters."""
    path, _ = two_layer_adapter
    torch.manual_seed(1)
    with pytest.raises(mlv.AdapterFileError, match="layers.2"):
        mlv.load_adapter(_llava_of_depth(3), path, check_base_weights=False)


def test_the_refusal_for_a_deeper_random_base_names_the_architecture_not_the_weights(two_layer_adapter):
    path, _ = two_layer_adapter
    torch.manual_seed(1)
    with pytest.raises(mlv.AdapterFileError) as e:
        mlv.load_adapter(_llava_of_depth(3), path)
    assert "other weights of this architecture" not in str(e.value), str(e.value)


@pytest.mark.parametrize("name,problem", [("a:b", r"contains ':'"), ("a?b", r"contains '\?'"),
                                          ('a"b', "contains '\"'"),
                                          ("a\x01b", r"contains control characters \(e.g. '\\x01'\)"),
                                          ("x" * 300, "is longer than 128 bytes")])
def test_task_names_that_cannot_name_files_are_not_saved_with_their_files(tmp_path, name, problem):
    """'a:b', 'a?b', control characters and 300-character names reached tasks/<task>.toml (no file on Windows, or
    none anywhere: ENAMETOOLONG after training); the one file-name rule refuses them before anything is written."""
    model = mlv.attach(_fresh(tiny_open_clip), mlv.MTLLoRAConfig(tasks=[name, "vqa"], r=2))
    spec = tmp_path / "vqa.toml"
    spec.write_text('kind = "vqa"\n')
    with pytest.raises(ValueError, match=rf"save_adapter: task name {re.escape(repr(name))} {problem}.*"
                                         r"tasks/<task>\.toml.*save without task_specs="):
        mlv.save_adapter(model, tmp_path / "out", task_specs={name: spec})
    assert not (tmp_path / "out").exists()
    mlv.load_adapter(_fresh(tiny_open_clip), mlv.save_adapter(model, tmp_path / "plain"))  # no file named by it


def test_an_adapter_file_of_another_float_dtype_loads_cast_to_fp32_and_fp64_is_warned(oc_adapter, tmp_path, caplog):
    """The sha256 covers a file's bytes, not what dtype they should be: a file rewritten in another float dtype with
    its digest updated loads, cast to the fp32 parameters attach makes (documented). fp16 / bf16 widen exactly; a
    float64 file (a ``.double()`` model's adapter) was rounded to fp32 without a word (helper 310): now warned."""
    import logging

    from safetensors.torch import load_file

    saved = load_file(str(oc_adapter[0] / ADAPTER_WEIGHTS))
    for dtype, warned in ((torch.float16, False), (torch.bfloat16, False), (torch.float64, True)):
        path = _copy(oc_adapter[0], tmp_path / str(dtype))
        wanted = {n: t.to(dtype) + (1e-12 if dtype == torch.float64 else 0) for n, t in saved.items()}
        _rewrite(path, wanted)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.io.base_check"):
            model = mlv.load_adapter(_fresh(tiny_open_clip), path)
        params = dict(model.named_parameters())
        for n, t in wanted.items():
            assert params[n].dtype == torch.float32 and torch.equal(params[n], t.float()), n
        said = [r.getMessage() for r in caplog.records if "float64" in r.getMessage()]
        assert bool(said) == warned, said
    assert re.search(rf"{len(saved)} adapter tensor\(s\) are float64 .*rounded to fp32", said[0])
