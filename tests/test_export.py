"""Exports: one task as a real PEFT LoRA, the plain LoRA layout, merged checkpoints that the base
libraries load themselves, export_merged.py, and load_pretrained (base model + heads in one call)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import llava_inputs, tiny_hf_clip, tiny_llava, tiny_open_clip, tiny_timm_vit
from safetensors.torch import load_file
from test_adapter_io import _fresh, _hf_run, _llava_run, _oc_run, _outputs, _randomize, _trained  # noqa: F401
from torch import nn
from torch.overrides import TorchFunctionMode

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attach import attach_info
from mtl_lora_vl.io import ADAPTER_CONFIG, AdapterFileError, apply_plain_lora
from mtl_lora_vl.io.exports import PLAIN_WEIGHTS

TASKS = ["vqa", "retrieval", "cls"]
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- PEFT


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
@pytest.mark.parametrize("family", ["hf_clip", "llava"])
@pytest.mark.parametrize("method", ["mtl_lora", "multi_lora"])
def test_peft_round_trip_matches_the_routed_task(family, method, tmp_path):
    from peft import PeftModel

    build, inputs, run = {"hf_clip": (tiny_hf_clip, lambda: (torch.randn(2, 3, 32, 32), torch.randint(0, 60, (2, 10))),
                                      _hf_run),
                          "llava": (tiny_llava, lambda: llava_inputs(2), _llava_run)}[family]
    model = _trained(build, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, alpha=6, method=method))
    inp = inputs()
    ref = _outputs(model, run, inp, ["retrieval"])["retrieval"]
    path = mlv.export_lora(model, "retrieval", tmp_path / "peft")
    cfg = json.loads((path / "adapter_config.json").read_text())
    R = 4 if method == "mtl_lora" else 8
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == R
    assert sorted(cfg["target_modules"]) == sorted(model._mtl_lora.layers)

    base = _fresh(build)
    with torch.no_grad():
        zero_shot = run(base, inp)
    peft_model = PeftModel.from_pretrained(base, str(path)).eval()
    with torch.no_grad():
        got = run(peft_model, inp)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (ref - zero_shot).abs().max() > 1e-3  # the task's update really is in there


def test_peft_format_refuses_multihead_attention(tmp_path):
    model = _trained(tiny_open_clip)
    with pytest.raises(ValueError, match="PEFT LoRA cannot express adapters on the packed in-projection"):
        mlv.export_lora(model, "vqa", tmp_path / "x", format="peft")
    assert not (tmp_path / "x").exists()


def test_export_refuses_to_overwrite(tmp_path):
    model = _trained(tiny_hf_clip)
    path = mlv.export_lora(model, "vqa", tmp_path / "peft")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mlv.export_lora(model, "cls", path)
    mlv.export_lora(model, "cls", path, overwrite=True)
    with pytest.raises(KeyError, match="unknown task 'caption'"):
        mlv.export_lora(model, "caption", tmp_path / "other")


# ---------------------------------------------------------------------------------------------- several tasks


def _peft_serving(build, path, tasks):
    """A PEFT model with every task of a multi-task export loaded as a named adapter."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(_fresh(build), str(path / tasks[0]), adapter_name=tasks[0])
    for t in tasks[1:]:
        peft_model.load_adapter(str(path / t), adapter_name=t)
    return peft_model.eval()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
@pytest.mark.parametrize("family", ["hf_clip", "llava"])
def test_all_tasks_as_named_peft_adapters_serve_a_mixed_batch(family, tmp_path):
    build = {"hf_clip": tiny_hf_clip, "llava": tiny_llava}[family]
    model = _trained(build, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, alpha=6))
    path = mlv.export_lora(model, TASKS, tmp_path / "all")
    per_task = {"adapter_config.json", "adapter_model.safetensors", "mtl_lora_export.json"}
    assert _files(path) == {"README.md", "mtl_lora_export.json"} | {f"{t}/{f}" for t in TASKS for f in per_task}
    assert json.loads((path / "mtl_lora_export.json").read_text())["tasks"] == TASKS
    readme = (path / "README.md").read_text()
    assert "adapter_name='vqa'" in readme
    # PEFT takes a row's several images for rows, silently (helper 170): the README says for which rows it works
    assert "adapter_names=['vqa', " in readme and "(rows of one image each" in readme

    peft_model = _peft_serving(build, path, TASKS)
    # The layout is the one PEFT itself writes for these named adapters.
    peft_model.save_pretrained(str(tmp_path / "by_peft"))
    records = {"mtl_lora_export.json"} | {f"{t}/mtl_lora_export.json" for t in TASKS}
    assert _files(tmp_path / "by_peft") == _files(path) - records

    names = ["cls", "vqa", "retrieval", "vqa"]
    ids = torch.tensor([TASKS.index(n) for n in names])
    with torch.no_grad():
        if family == "hf_clip":  # PEFT routes forward (and generate) only: call CLIPModel with both inputs
            inp = dict(pixel_values=torch.randn(4, 3, 32, 32), input_ids=torch.randint(0, 60, (4, 10)))
            with mlv.route(model, ids):
                ref = model(**inp)
            got = peft_model(**inp, adapter_names=names)
            keys = ("image_embeds", "text_embeds", "logits_per_image")
        else:
            inp = llava_inputs(4)
            with mlv.route(model, ids):
                ref = model(**inp)
                ref_tokens = model.generate(**inp, max_new_tokens=5, do_sample=False)
            got = peft_model(**inp, adapter_names=names)
            tokens = peft_model.generate(**inp, adapter_names=names, max_new_tokens=5, do_sample=False)
            assert torch.equal(tokens, ref_tokens)
            keys = ("logits",)
        for k in keys:
            torch.testing.assert_close(getattr(got, k), getattr(ref, k), atol=1e-5, rtol=1e-5)
        with mlv.route(model, "vqa"):  # the rows really differ by task
            one = model(**inp)
        assert (getattr(one, keys[0])[0] - getattr(ref, keys[0])[0]).abs().max() > 1e-3


def test_several_tasks_in_the_plain_layout(tmp_path):
    model = _trained(tiny_open_clip, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    inp = (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12)))
    ref = _outputs(model, _oc_run, inp, ["cls", "vqa"])
    path = mlv.export_lora(model, ("cls", "vqa"), tmp_path / "plain")
    assert _files(path) == {"README.md", "mtl_lora_export.json", "cls/lora_config.json", "cls/lora_model.safetensors",
                            "vqa/lora_config.json", "vqa/lora_model.safetensors", "cls/mtl_lora_export.json",
                            "vqa/mtl_lora_export.json"}
    for t in ("cls", "vqa"):
        assert json.loads((path / t / "lora_config.json").read_text())["task"] == t
        with torch.no_grad():
            got = _oc_run(apply_plain_lora(_fresh(tiny_open_clip), path / t), inp)
        torch.testing.assert_close(got, ref[t], atol=1e-5, rtol=1e-5)
    one = mlv.export_lora(model, ["cls"], tmp_path / "one")  # a list: subfolders, even for one task
    assert _files(one) == {"README.md", "mtl_lora_export.json", "cls/lora_config.json", "cls/lora_model.safetensors",
                           "cls/mtl_lora_export.json"}


def test_several_tasks_argument_errors(tmp_path):
    model = _trained(tiny_hf_clip, mlv.MTLLoRAConfig(tasks=["vqa", "v-2"], r=2))   # ('a/b': the next test)
    out = tmp_path / "x"
    with pytest.raises(ValueError, match=r"export_lora: task 'vqa' named more than once"):
        mlv.export_lora(model, ["vqa", "vqa"], out)
    with pytest.raises(TypeError, match="non-empty list of task names"):
        mlv.export_lora(model, [], out)
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        mlv.export_lora(model, ["vqa", "nope"], out)
    assert not out.exists()
    mlv.export_lora(model, ["vqa", "v-2"], out, format="plain")  # (a task name may not hold a dot: MTLLoRAConfig)
    assert (out / "v-2" / "lora_config.json").is_file()


def test_several_tasks_whose_names_cannot_name_folders_are_refused(tmp_path):
    """A config accepts 'a/b', 'a:b' or an absolute path as a task name (a plain save_adapter keeps it), but a folder
    per task cannot be named so: '<dir>/outside' was written to <dir>/outside (out of OUT) by export --task, and
    'a:b' (no folder on Windows) by export_lora. The one file-name rule refuses them before anything is written."""
    import mtl_lora_vl.cli.export as ce
    from mtl_lora_vl.backbones import load_backbone

    outside = str(tmp_path / "outside")
    for name, shown in (("a:b", "contains ':'"), ("a/b", "contains '/'"), (outside, "contains '/'")):
        model = mlv.attach(tiny_hf_clip(), mlv.MTLLoRAConfig(tasks=["vqa", name], r=2))
        with pytest.raises(ValueError, match=rf"export_lora: task name {re.escape(repr(name))} {shown}.*"
                                             r"path/<task>/; export it alone"):
            mlv.export_lora(model, ["vqa", name], tmp_path / "x", format="plain")
    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", outside], r=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin"})
    assert ce.export_main(["--adapter", str(adapter), "--task", f"vqa,{outside}", "--out", str(tmp_path / "o"),
                           "--format", "plain"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists() and not (tmp_path / "outside").exists()


# ---------------------------------------------------------------------------------------------- plain layout


@pytest.mark.parametrize("build,qkv", [(tiny_open_clip, "qkv"), (tiny_timm_vit, "qv")])
def test_plain_lora_layout_reproduces_the_task(build, qkv, tmp_path):
    from safetensors import safe_open

    model = _trained(build, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, qkv_slices=qkv))
    run = _oc_run if build is tiny_open_clip else (lambda m, x: m(x[0]))
    inp = (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12)))
    ref = _outputs(model, run, inp, ["cls"])["cls"]
    path = mlv.export_lora(model, "cls", tmp_path / "plain")
    doc = json.loads((path / "lora_config.json").read_text())
    assert doc["format"] == "mtl-lora-vl-plain-lora" and doc["task"] == "cls" and doc["scaling"] == 1.0
    name = "visual.transformer.resblocks.0.attn.in_proj" if build is tiny_open_clip else "blocks.0.attn.qkv"
    entry = doc["modules"][name]
    assert entry["shape"] == [96, 32] and entry["base_weight"] in (name + "_weight", name + ".weight")
    with safe_open(str(path / "lora_model.safetensors"), "pt") as f:
        assert tuple(f.get_slice(name + ".lora_A").get_shape()) == (4, 32)
        B = f.get_tensor(name + ".lora_B")
    assert B.shape == (96, 4)
    if qkv == "qv":
        assert B[32:64].abs().max() == 0  # k rows are not adapted
    fresh = apply_plain_lora(_fresh(build), path)
    with torch.no_grad():
        torch.testing.assert_close(run(fresh, inp), ref, atol=1e-5, rtol=1e-5)
    # an incomplete directory is named before any weight changes (a bare KeyError came out mid-way)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path / "lora_model.safetensors"))
    del tensors[name + ".lora_A"]
    save_file(tensors, str(path / "lora_model.safetensors"))
    untouched = _fresh(build)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(AdapterFileError, match=re.escape(f"lacks tensor(s) {name}.lora_A")):
        apply_plain_lora(untouched, path)
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def test_plain_lora_checks_the_base_and_writes_all_or_nothing(tmp_path):
    model = _trained(tiny_open_clip, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    path = mlv.export_lora(model, "cls", tmp_path / "plain", format="plain")
    other = _fresh(tiny_open_clip, seed=7)   # same architecture, other weights: was applied silently
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(AdapterFileError, match="trained on other weights.*check_base_weights=False"):
        apply_plain_lora(other, path)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    apply_plain_lora(other, path, check_base_weights=False)
    with pytest.raises(AdapterFileError, match="adapter was made for .*CLIP.*load it onto the base model"):
        apply_plain_lora(tiny_hf_clip(), path)
    with pytest.raises(AdapterFileError, match="already has MTL-LoRA adapters, and the update would be counted twice"):
        apply_plain_lora(model, path)   # it folded the update under the live adapters (routed: twice)
    doc = json.loads((path / "lora_config.json").read_text())
    (path / "lora_config.json").write_text(json.dumps({**doc, "format_version": 99, "package_version": "99.0"}))
    with pytest.raises(AdapterFileError, match="format_version 99 .*written by mtl-lora-vl 99.0, newer .*upgrade"):
        apply_plain_lora(_fresh(tiny_open_clip), path)
    # a rank that does not match in a later module: refused before the earlier modules are written
    (path / "lora_config.json").write_text(json.dumps(doc))
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path / "lora_model.safetensors"))
    last = sorted(k for k in tensors if k.endswith(".lora_A"))[-1]
    tensors[last] = tensors[last][:2]
    save_file(tensors, str(path / "lora_model.safetensors"))
    fresh = _fresh(tiny_open_clip)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(AdapterFileError, match="shape mismatch in module .*lora_B .*@ lora_A"):
        apply_plain_lora(fresh, path, check_base_weights=False)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_plain_lora_finds_and_refuses_a_tied_weight(tmp_path):
    from test_attach import _randomize_adapters, _Tied

    model = mlv.attach(_Tied(), mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"^head$"]}))
    _randomize_adapters(model)
    path = mlv.export_lora(model, "a", tmp_path / "plain", format="plain")
    fresh = _Tied()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    with pytest.raises(AdapterFileError, match=r"base weight head.weight \(for head\) is shared with embed.weight"):
        apply_plain_lora(fresh, path)


def test_plain_lora_folds_into_a_module_reachable_under_two_names(tmp_path):
    """One nn.Linear under two names has one weight and one owner: it was refused as tied ('load the adapter routed
    instead'), although merge folds it in."""
    from test_attach import _randomize_adapters, _SharedProj

    torch.manual_seed(0)
    model = mlv.attach(_SharedProj(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, targets={"image": [r"img_proj$"]}))
    _randomize_adapters(model)
    x = torch.randn(3, 8)
    with torch.no_grad(), mlv.route(model, "a"):
        want = model(x)
    path = mlv.export_lora(model, "a", tmp_path / "plain", format="plain")
    torch.manual_seed(0)
    fresh = apply_plain_lora(_SharedProj(), path)
    with torch.no_grad():
        got = fresh(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_plain_lora_on_a_float64_base_keeps_its_weights_in_float64(tmp_path):
    """A float64 base (fp32 adapters) was folded in fp32: every adapted weight, ΔW aside, was rounded to fp32 (5e-7
    off the routed model); now the update is added in float64, as ``merge`` adds it. (The routed forward forms M_t in
    the adapters' fp32, so it sits ~1e-7 from either fold on some CPUs: the folds are compared with each other.)
    Attached to a ``.double()`` base, adapters are float64 since helper 516: the base is cast after attaching."""
    torch.manual_seed(0)
    model = mlv.attach(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8)),
                       mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, targets={"image": [r"^\d$"]}))
    for n, p in model.named_parameters():
        if "lora_" not in n:
            p.data = p.data.double()
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    _randomize(model)
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad(), mlv.route(model, "b"):
        routed = model(x)
    path = mlv.export_lora(model, "b", tmp_path / "plain", format="plain")
    merged = mlv.merge(model, "b")
    torch.manual_seed(0)
    fresh = apply_plain_lora(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8)).double(), path)
    assert fresh[0].weight.dtype == torch.float64
    with torch.no_grad():
        for i in range(2):
            torch.testing.assert_close(fresh[i].weight, merged[i].weight, atol=1e-15, rtol=0)
        torch.testing.assert_close(fresh(x), routed, atol=1e-6, rtol=0)


def _seeded_pair() -> nn.Sequential:
    """Two linear layers, the same weights at each call."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))


def _float64_plain_export(tmp_path) -> tuple[nn.Module, Path]:
    """:func:`_seeded_pair` adapted, ``.double()``-ed, randomized, and task b's plain LoRA export of it."""
    model = mlv.attach(_seeded_pair(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, targets={"image": [r"^\d$"]}))
    model.double()
    _randomize(model)
    return model, mlv.export_lora(model, "b", tmp_path / "plain", format="plain")


def test_float64_adapters_export_to_a_plain_lora_that_folds_as_merge_bit_for_bit(tmp_path):
    """Helper 498: a ``.double()`` model's plain export held lora_B / lora_A rounded to fp32 (``lora_pair``), so
    ``apply_plain_lora`` on the float64 base came out ~2e-8 off ``merged_state_dict`` / ``merge``; the file holds the
    fp64 pair ``delta_weight`` multiplies. Folded into an fp32 base, the fp64 pair is multiplied in fp64 and the sum
    rounded once, as ``merge`` folds float64 adapters into an fp32 weight (``_product`` multiplied in fp32)."""
    model, path = _float64_plain_export(tmp_path)
    assert {t.dtype for t in load_file(path / PLAIN_WEIGHTS).values()} == {torch.float64}
    want = mlv.merged_state_dict(model, "b")
    fresh = apply_plain_lora(_seeded_pair().double(), path)
    for i in range(2):
        assert torch.equal(fresh[i].weight, want[f"{i}.weight"]), (fresh[i].weight - want[f"{i}.weight"]).abs().max()
    narrow = apply_plain_lora(_seeded_pair(), path)   # the fp32 weights the model had before .double()
    layers = attach_info(model).layers
    for i, layer in enumerate(_seeded_pair()):
        assert torch.equal(narrow[i].weight, (layer.weight.double() + layers[str(i)].delta_weight(1)).float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_base_gets_the_update_summed_in_fp32_and_rounded_once(tmp_path, dtype):
    """``merge``, ``merged_state_dict`` and ``apply_plain_lora`` add a task's fp32 update to a bf16 / fp16 weight in
    fp32 and round the sum once (``fold_dtype.folded``). Summed in the weight's dtype, the update is rounded first and
    some merged values land a step off; no test told the two apart (helper 485: ``folded`` summing in the weight's
    dtype passed test_attach and test_export), so the fold of a half-precision base is checked bit for bit here."""
    torch.manual_seed(0)
    model = mlv.attach(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8)).to(dtype),
                       mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, targets={"image": [r"^\d$"]}))
    _randomize(model)
    base = [model[i].weight.detach().clone() for i in range(2)]
    deltas = [attach_info(model).layers[str(i)].delta_weight(1, dtype) for i in range(2)]
    assert {d.dtype for d in deltas} == {torch.float32}
    want = [(w.float() + d).to(dtype) for w, d in zip(base, deltas)]
    assert any(not torch.equal(w + d.to(dtype), x) for w, d, x in zip(base, deltas, want))   # (the narrow sum differs)
    merged_sd = mlv.merged_state_dict(model, "b")
    path = mlv.export_lora(model, "b", tmp_path / "plain", format="plain")
    mlv.merge(model, "b")
    for i in range(2):
        assert torch.equal(merged_sd[f"{i}.weight"], want[i]) and torch.equal(model[i].weight, want[i])
    plain = load_file(str(path / PLAIN_WEIGHTS))
    torch.manual_seed(0)
    fresh = apply_plain_lora(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8)).to(dtype), path)
    for i in range(2):
        B, A = plain[f"{i}.lora_B"], plain[f"{i}.lora_A"]
        assert B.dtype == A.dtype == torch.float32
        assert torch.equal(fresh[i].weight, (base[i].float() + B @ A).to(dtype))


def test_a_config_from_a_newer_package_says_to_upgrade(tmp_path):
    model = _trained(tiny_open_clip, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    path = mlv.save_adapter(model, tmp_path / "ad")
    cfg_file = path / ADAPTER_CONFIG
    doc = json.loads(cfg_file.read_text())
    doc["package_version"] = "9.0.0"
    doc["config"]["use_dora"] = True
    from safetensors.torch import load_file, save_file

    from mtl_lora_vl.io.adapter_files import ADAPTER_WEIGHTS
    from mtl_lora_vl.io.tensor_files import record_sha256, sha256_file
    weights = path / ADAPTER_WEIGHTS   # as that package writes them: with the digest of its config
    save_file(load_file(str(weights)), str(weights),
              {"format": doc["format"], "config_sha256": record_sha256(doc["config"])})
    doc["files"][ADAPTER_WEIGHTS] = sha256_file(weights)
    cfg_file.write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError, match="unknown config field.*use_dora.*written by mtl-lora-vl 9.0.0, newer "
                                               "than this .*: upgrade mtl-lora-vl"):
        mlv.load_adapter(_fresh(tiny_open_clip), path)


# ---------------------------------------------------------------------------------------------- merged checkpoints


def test_merged_open_clip_file_loads_with_create_model(tmp_path):
    import open_clip

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "mtl-tiny-clip.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
        "text_cfg": dict(context_length=12, vocab_size=64, width=32, heads=2, layers=2),
    }))
    open_clip.add_model_config(cfg_dir)
    model = _trained(tiny_open_clip)
    inp = (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12)))
    ref = _outputs(model, _oc_run, inp, ["retrieval"])["retrieval"]
    out = mlv.save_merged(model, "retrieval", tmp_path / "merged.safetensors")
    plain = open_clip.create_model("mtl-tiny-clip", pretrained=str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(_oc_run(plain, inp), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mlv.save_merged(model, "retrieval", out)
    with pytest.raises(ValueError, match=r"an open_clip local-dir .*needs open_clip_config.json; pass source_dir="):
        mlv.save_merged(model, "retrieval", tmp_path / "dir")   # it wrote a folder nothing could load
    assert not (tmp_path / "dir").exists()


def test_export_of_an_open_clip_name_base_writes_a_local_dir_that_loads(tmp_path, capsys, monkeypatch):
    """An open_clip:NAME base has no folder to copy open_clip_config.json from: export --out DIR wrote the
    weights alone, exited 0, and nothing could load the folder. Also refused before the base model loads:
    a misspelt --task (with a did-you-mean), and a .safetensors --out for a LoRA format."""
    import open_clip
    from safetensors.torch import save_file

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.cli import export_main

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mtl-tiny-clip-49k.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16),
        "text_cfg": dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)}))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    save_file(open_clip.create_model("mtl-tiny-clip-49k").state_dict(), str(tmp_path / "w.safetensors"))
    bb = load_backbone("open_clip:mtl-tiny-clip-49k", pretrained=str(tmp_path / "w.safetensors"))
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "cls"], r=4, n_up=2))
    _randomize(bb.model)
    ad = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": "open_clip:mtl-tiny-clip-49k",
                                                                "pretrained": str(tmp_path / "w.safetensors")})
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), mlv.route(bb.model, "vqa"):
        want = bb.model.encode_image(images)

    import mtl_lora_vl.cli.export_tasks as export_cli

    def no_load(*a, **k):
        raise AssertionError("the base model was loaded before the arguments were checked")

    monkeypatch.setattr(export_cli, "load_pretrained", no_load)
    for args, says in ((["--task", "vqq"], r"--task 'vqq': the adapter has no such task.*did you mean 'vqa'"),
                       (["--task", "vqa cls"], r"no such task.*\(task names are separated by commas: --task vqa,cls\)"),
                       (["--task", "vqa", "--format", "plain", "--out", str(tmp_path / "l.safetensors")],
                        r"--format plain writes a LoRA directory")):
        assert export_main(["--adapter", str(ad), "--out", str(tmp_path / "x"), *args]) == 2
        assert re.search(says, capsys.readouterr().err)
    monkeypatch.undo()
    assert export_main(["--adapter", str(ad), "--task", "vqa", "--out", str(tmp_path / "merged")]) == 0
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'merged'}").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(images), want, atol=1e-5, rtol=1e-5)
    assert load_backbone(f"open_clip:{tmp_path / 'merged'}").image_size == 32


@pytest.mark.parametrize("family", ["hf_clip", "llava"])
def test_merged_hugging_face_directory_loads_with_from_pretrained(family, tmp_path):
    from transformers import CLIPModel, LlavaForConditionalGeneration

    build, cls, inp, run = {
        "hf_clip": (tiny_hf_clip, CLIPModel, (torch.randn(2, 3, 32, 32), torch.randint(0, 60, (2, 10))), _hf_run),
        "llava": (tiny_llava, LlavaForConditionalGeneration, llava_inputs(2), _llava_run),
    }[family]
    model = _trained(build)
    ref = _outputs(model, run, inp, ["cls"])["cls"]
    out = mlv.save_merged(model, "cls", tmp_path / "merged")
    plain = cls.from_pretrained(str(out)).eval()
    assert getattr(plain, "_mtl_lora", None) is None
    with torch.no_grad():
        torch.testing.assert_close(run(plain, inp), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- one-call loading


def _world_words() -> list[str]:
    from vl_tiny import world_words

    return world_words()


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory) -> Path:
    """A tiny open_clip local directory (config, weights, word tokenizer) that load_backbone reads."""
    from safetensors.torch import save_file

    from mtl_lora_vl.backbones import build_open_clip, build_word_tokenizer

    d = tmp_path_factory.mktemp("oc_base")
    build_word_tokenizer(_world_words(), d, context_length=20)
    vocab = len(json.loads((d / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 20, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 1,
                        "pool_type": "eos", "eos_id": 2}}
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    bb = build_open_clip(cfg, tokenizer_dir=d)
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(d / "model.safetensors"))
    return d


def _specs(tmp: Path) -> dict[str, Path]:
    vqa = tmp / "vqa.toml"
    vqa.write_text('kind = "vqa"\ntemplates = ["{}"]\n[data]\nsource = "builtin"\n[data.train]\nn = 30\n'
                   '[data.val]\nn = 10\n[options]\nanswer_vocab_size = 12\n')
    ret = tmp / "retrieval.toml"
    ret.write_text('kind = "retrieval"\n[data]\nsource = "builtin"\n[data.train]\nn = 20\n[data.val]\nn = 10\n')
    return {"vqa": vqa, "retrieval": ret}


@pytest.fixture(scope="module")
def trained_run(oc_dir, tmp_path_factory):
    """A 'trained' adapter with real task kinds and heads, saved as train_vl.py would."""
    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import build_kind, load_spec

    tmp = tmp_path_factory.mktemp("run")
    spec_files = _specs(tmp)
    bb = load_backbone(f"open_clip:{oc_dir}")
    kinds, heads = {}, {}
    for name, f in spec_files.items():
        spec = load_spec(f)
        kinds[name] = build_kind(spec, spec.load_split("train"), bb)
        heads[name] = kinds[name].build_head(bb)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=list(spec_files), r=4, n_up=2))
    from test_adapter_io import _randomize

    _randomize(bb.model)
    _randomize(heads["vqa"])
    with torch.no_grad():
        for p in heads["vqa"].parameters():
            p.add_(0.1)
    path = mlv.save_adapter(bb.model, tmp / "adapter", heads=heads, task_specs=spec_files, kinds=kinds,
                            base={"backbone": f"open_clip:{oc_dir}", "pretrained": None})
    return path, bb, heads, kinds


def test_load_pretrained_rebuilds_backbone_and_heads(trained_run):
    path, bb, heads, kinds = trained_run
    loaded = mlv.load_pretrained(path)
    backbone, new_heads, config = loaded
    assert config.tasks == ["vqa", "retrieval"] and set(new_heads) == {"vqa", "retrieval"}
    assert loaded.kinds["vqa"].answers == kinds["vqa"].answers
    for t in new_heads:
        for k, v in heads[t].state_dict().items():
            assert torch.equal(new_heads[t].state_dict()[k], v), (t, k)
    img = torch.randn(2, 3, 32, 32)
    tokens = backbone.tokenizer(["a red circle", "two blue squares"])
    for t in config.tasks:
        with torch.no_grad(), mlv.route(bb.model, t):
            ref = bb.encode_image(img), bb.encode_text(tokens)
        with torch.no_grad(), mlv.route(backbone.model, t):
            got = backbone.encode_image(img), backbone.encode_text(tokens)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    bare = mlv.load_pretrained(path, heads=False)
    assert bare.heads == {} and bare.kinds == {} and bare.config.tasks == config.tasks
    assert bare.specs["vqa"].kind == "vqa" and bare.specs["retrieval"].name == "retrieval"


def test_a_task_that_cannot_be_rebuilt_is_told_the_data_folder_only_when_a_file_was_not_read(trained_run,
                                                                                                monkeypatch):
    """Review 271: every failure to rebuild a task's kind said "give the data folder (--data-root ...)", also a
    refusal of its texts (a class name holding an image marker), which no data folder fixes."""
    import mtl_lora_vl.io.pretrained as pretrained

    path = trained_run[0]
    for error, hinted in ((ValueError("the class 'a <row_1_col_1>' holds a marker"), False),
                          (FileNotFoundError("rows.jsonl: no such file"), True)):
        def refuse(*args, _error=error, **kwargs):
            raise _error

        monkeypatch.setattr(pretrained, "build_kind", refuse)
        with pytest.raises(AdapterFileError, match="cannot rebuild task") as e:
            mlv.load_pretrained(path)
        assert ("--data-root" in str(e.value)) is hinted and "heads=False" in str(e.value), str(e.value)


def test_load_pretrained_needs_a_base_model_name(trained_run, tmp_path):
    import shutil

    p = Path(shutil.copytree(trained_run[0], tmp_path / "a"))
    doc = json.loads((p / ADAPTER_CONFIG).read_text())
    doc["base"] = {}
    (p / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError, match=r"does not say which base model.*backbone="):
        mlv.load_pretrained(p)
    # The kind is rebuilt from the vocabulary saved with the adapter (the head's), not from training data.
    from mtl_lora_vl.io.tensor_files import sha256_file as _sha256

    state_file = p / "tasks" / "vqa.state.json"
    state = json.loads(state_file.read_text())
    state["state"]["answers"] = list(reversed(state["state"]["answers"]))
    state_file.write_text(json.dumps(state))
    doc["files"]["tasks/vqa.state.json"] = _sha256(state_file)
    (p / ADAPTER_CONFIG).write_text(json.dumps(doc))
    loaded = mlv.load_pretrained(p, backbone=trained_run[1].name)
    assert loaded.kinds["vqa"].answers == state["state"]["answers"]


def _script():
    spec = importlib.util.spec_from_file_location("export_merged", REPO / "scripts" / "export_merged.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_merged_script_writes_a_directory_the_base_loader_reads(trained_run, tmp_path, capsys):
    from mtl_lora_vl.backbones import load_backbone

    path, bb, _, _ = trained_run
    out = _script().main(["--adapter", str(path), "--task", "vqa", "--out", str(tmp_path / "merged")])
    assert "wrote" in capsys.readouterr().out
    assert {"open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    plain = load_backbone(f"open_clip:{out}")
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), mlv.route(bb.model, "vqa"):
        ref = bb.encode_image(img)
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(img), ref, atol=1e-5, rtol=1e-5)
    f = _script().main(["--adapter", str(path), "--task", "retrieval", "--out", str(tmp_path / "r.safetensors")])
    assert f.is_file()
    with pytest.raises(SystemExit) as e:
        _script().main(["--adapter", str(path), "--task", "nope", "--out", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2 and "the adapter has no such task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main(["--adapter", str(path), "--task", "vqa", "--out", str(tmp_path / "merged")])
    assert "holds an earlier output of export; pass --overwrite" in capsys.readouterr().err


def test_heads_are_plain_modules_not_pickles(trained_run):
    path = trained_run[0]
    assert all(p.suffix in (".json", ".toml", ".safetensors") for p in path.rglob("*") if p.is_file())
    state = json.loads((path / "tasks" / "vqa.state.json").read_text())
    assert state["kind"] == "vqa" and state["state"]["answers"] == trained_run[3]["vqa"].answers
    assert isinstance(trained_run[2]["retrieval"], nn.Module)


# ---------------------------------------------------------------------------------------- overwrite and partial failure


def test_export_overwrite_never_replaces_an_adapter_a_run_or_the_base_models_own_folder(tmp_path):
    """export_lora / save_merged(overwrite=True) replaced a native adapter directory (every task and head) with one
    task's PEFT LoRA, and a merged export over the folder the model was loaded from deleted the base weights;
    save_adapter(overwrite=True) and the CLI refuse both."""
    torch.manual_seed(0)
    tiny_llava().save_pretrained(tmp_path / "base")
    from transformers import LlavaForConditionalGeneration

    model = mlv.attach(LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "base")),
                       mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    _randomize(model)
    adapter = mlv.save_adapter(model, tmp_path / "ad", base={"backbone": f"hf:{tmp_path / 'base'}"})   # (not
    # "adapter": tmp_path would then look like a training run directory, which is refused first)
    kept = sorted(p.name for p in adapter.iterdir())
    with pytest.raises(FileExistsError, match="adapter"):
        mlv.export_lora(model, "vqa", adapter, overwrite=True)
    with pytest.raises(FileExistsError, match="adapter"):
        mlv.save_merged(model, "vqa", adapter, overwrite=True)
    assert sorted(p.name for p in adapter.iterdir()) == kept
    weights = (tmp_path / "base" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="base model"):
        mlv.save_merged(model, "vqa", tmp_path / "base", overwrite=True)
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == weights
    # an earlier export is still replaced
    out = mlv.export_lora(model, "vqa", tmp_path / "peft")
    mlv.export_lora(model, "cls", out, overwrite=True)


def test_a_failed_multi_task_export_says_what_was_written(tmp_path, monkeypatch, capsys):
    import mtl_lora_vl.cli.export as ce
    import mtl_lora_vl.cli.export_tasks as work
    from mtl_lora_vl.backbones import load_backbone

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "ad", base={"backbone": "builtin"})
    real, calls = work.save_merged, []

    def flaky(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(work, "save_merged", flaky)
    assert ce.export_main(["--adapter", str(adapter), "--task", "vqa,retrieval,cls", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "task 'retrieval'" in err and "No space left on device" in err   # which task failed, and why
    assert re.search(r"written \(complete\): \S+/o/vqa; not written: retrieval, cls \(rerun for them with --task "
                     r"retrieval,cls\)", err), err


def test_export_overwrite_replaces_an_earlier_export_inside_a_run_directory(tmp_path):
    """check_replace refused every overwrite=True under a folder that is (or looks like: it holds adapter/) a
    training run, so `export --adapter RUN/adapter --out RUN/exports/vqa --overwrite` (which check_output allows,
    and which replaced the earlier export before) failed in the API call; the run itself is still never replaced."""
    import mtl_lora_vl.cli.export as ce
    from mtl_lora_vl.backbones import load_backbone

    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "run" / "adapter", base={"backbone": "builtin"})
    for fmt, out in (("plain", tmp_path / "run" / "exports" / "vqa"), ("merged", tmp_path / "run" / "vqa.safetensors")):
        argv = ["--adapter", str(adapter), "--task", "vqa", "--format", fmt, "--out", str(out)]
        assert ce.export_main(argv) == 0
        assert ce.export_main([*argv, "--overwrite"]) == 0
    mlv.export_lora(bb.model, "vqa", tmp_path / "run" / "exports" / "vqa", format="plain", overwrite=True)
    with pytest.raises(FileExistsError, match="training run"):
        mlv.export_lora(bb.model, "vqa", tmp_path / "run", format="plain", overwrite=True)
    with pytest.raises(FileExistsError, match="adapter"):
        mlv.export_lora(bb.model, "vqa", adapter, format="plain", overwrite=True)


@pytest.mark.parametrize("fold", ["apply_plain_lora", "save_merged"])
def test_a_float8_base_is_refused_by_name_before_any_weight_is_written(fold, tmp_path):
    """Helper 455: a float8 base gave torch's own "Promotion for Float8 Types is not supported" (apply_plain_lora,
    save_merged). Widened and cast back, an update 1% the size of the weights would change none of them: refused, by
    weight name, with what to do; the model is left as it was."""
    torch.manual_seed(0)
    layers = (nn.Linear(16, 16), nn.Linear(16, 8))
    config = mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, targets={"image": [r"^\d$"]})
    model = mlv.attach(nn.Sequential(*layers), config)
    _randomize(model)
    if fold == "apply_plain_lora":
        path = mlv.export_lora(model, "b", tmp_path / "plain", format="plain")
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
        base[1].to(torch.float8_e4m3fn)
        before = base[1].weight.detach().clone()
        with pytest.raises(TypeError, match=r"apply_plain_lora: the base weight 1.weight is float8_e4m3fn: a LoRA "
                                            r"update folded into it .*load the base model in bfloat16 or float32"):
            apply_plain_lora(base, path)
        assert torch.equal(base[1].weight.view(torch.uint8), before.view(torch.uint8))
    else:
        model.to(torch.float8_e5m2)
        with pytest.raises(TypeError, match=r"save_merged: the base weight 0.weight is float8_e5m2 \(and 1 more\)"):
            mlv.save_merged(model, "a", tmp_path / "merged.safetensors")
        assert not (tmp_path / "merged.safetensors").exists()


class _NoFloat64OnDevices(TorchFunctionMode):
    """CPU faking a device that holds no float64, as MPS does (``refuses="move"``: a float64 tensor moved to a device,
    ``.to(device)``, raises its TypeError; casts on the host, ``.to(dtype=)``, pass) or as an Intel Arc GPU under XPU
    does (``refuses="kernel"``: a float64 matrix product raises its RuntimeError). ``error``: what is raised in
    their place (DirectML's, or a pending CUDA error's). ``refused`` counts them."""

    def __init__(self, refuses: str, error: Exception | None = None) -> None:
        super().__init__()
        self.refuses, self.refused = refuses, 0
        self.error = error or (TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't "
                                         "support float64. Please use float32 instead.") if refuses == "move" else
                               RuntimeError("Required aspect fp64 is not supported on the device"))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        wide = any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args)
        if self.refuses == "kernel" and func in (torch.Tensor.matmul, torch.matmul) and wide:
            self.refused += 1
            raise self.error
        out = func(*args, **kwargs)
        moved = "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])
        if (self.refuses == "move" and func is torch.Tensor.to and moved and isinstance(out, torch.Tensor)
                and out.dtype == torch.float64):
            self.refused += 1
            raise self.error
        return out


_DIRECTML = RuntimeError("The GPU device does not support Double (Float64) operations!")
_NO_KERNEL = RuntimeError('"addmm_impl_xpu_" not implemented for \'Double\'')


@pytest.mark.parametrize(("refuses", "error"), [("move", None), ("kernel", None), ("kernel", _DIRECTML),
                                                ("kernel", _NO_KERNEL)])
def test_a_float64_plain_lora_folds_in_fp32_on_a_device_without_float64(tmp_path, refuses, error):
    """Helper 513: a float64 model's plain export keeps its fp64 pair, and apply_plain_lora moved it to the weight's
    device as float64 to multiply there: on Apple's MPS (no float64) folding such a file into an fp32 model raised
    TypeError. _holds_float64 then knew MPS by name only (Intel Arc GPUs under XPU, DirectML on them, lack float64
    too); it now asks the device, once per device in each apply_plain_lora call. Here CPU fakes a device that refuses
    float64 tensors (MPS) or float64 kernels (Arc): the pair is cast to fp32 on the host and multiplied in fp32, the
    device asked once for the two layers and again by the next call (nothing kept); where the device holds float64,
    in fp64 as before."""
    model, path = _float64_plain_export(tmp_path)
    pairs = load_file(path / PLAIN_WEIGHTS)
    wide = apply_plain_lora(_seeded_pair(), path)
    fake = _NoFloat64OnDevices(refuses, error)
    with fake:
        narrow = apply_plain_lora(_seeded_pair(), path)
        assert fake.refused == 1
        again = apply_plain_lora(_seeded_pair(), path)
        assert fake.refused == 2
    differ = 0
    for i, layer in enumerate(_seeded_pair()):
        update = pairs[f"{i}.lora_B"].float() @ pairs[f"{i}.lora_A"].float()
        assert torch.equal(narrow[i].weight, layer.weight + update)
        assert torch.equal(again[i].weight, narrow[i].weight)
        differ += int(not torch.equal(narrow[i].weight, wide[i].weight))
    assert differ   # (fp32 and fp64 products round apart somewhere: the fp32 fold was taken)


_CUDA_ASSERT = RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
                            "reported at some other API call, so the stacktrace below might be incorrect.")


@pytest.mark.parametrize(("refuses", "error"), [("kernel", _CUDA_ASSERT), ("move", _CUDA_ASSERT),
                                                ("move", TypeError("to() received an invalid combination of "
                                                                   "arguments"))])
def test_a_float64_probe_raises_an_error_that_does_not_say_no_float64(tmp_path, refuses, error):
    """Helper 546: the float64 probe caught any TypeError or RuntimeError as "no float64", so a pending CUDA error
    (a device-side assert of an earlier kernel, reported at the probe's move or product) was swallowed and the fold
    done in fp32 on a device in an error state. Only errors that say the device has no float64 (MPS', XPU's,
    DirectML's, a missing Double kernel's: the test above) mean that; any other is raised as it is."""
    _, path = _float64_plain_export(tmp_path)
    fake = _NoFloat64OnDevices(refuses, error)
    with fake, pytest.raises(type(error)) as raised:
        apply_plain_lora(_seeded_pair(), path)
    assert raised.value is error and fake.refused == 1
