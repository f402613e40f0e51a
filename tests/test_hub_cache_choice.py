"""Which Hugging Face hub cache a model loaded by hub id came from (``save_merged`` takes its processor and tokenizer
files from that cache's snapshot), found from what can be known: the folder ``huggingface_hub`` reads, the
environment, the model's own weights."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_hf_clip
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.backbones.cache import hf_hub_cache, hub_caches


def test_the_hub_cache_from_the_environment_expands_variables_as_huggingface_hub_does(tmp_path, monkeypatch):
    """HF_HOME='$SCRATCH/hf' (an env file no shell expanded): huggingface_hub expands it, this package looked in a
    folder literally named '$SCRATCH' under the working directory."""
    monkeypatch.setenv("SCRATCH", str(tmp_path))
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", "$SCRATCH/hf")
    assert hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", "${SCRATCH}/hub")
    assert hf_hub_cache() == tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub")
    assert hf_hub_cache() == Path("~/hub").expanduser()


@pytest.mark.parametrize(("key", "expected"), [("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""),
                                               ("HF_HOME", "hub"), ("XDG_CACHE_HOME", "huggingface/hub")])
def test_a_hub_cache_variable_set_empty_is_the_folder_huggingface_hub_makes_of_it(monkeypatch, key, expected):
    """huggingface_hub.constants reads os.getenv(NAME, default): a variable set empty (HF_HOME= in an env file) is
    set, and it downloads to ./hub (huggingface_hub 1.5.0 and 2.5.0 alike); this package took it as unset and looked
    for cached hub ids in ~/.cache/huggingface/hub."""
    for other in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(key, "")
    assert hf_hub_cache() == Path(expected)


def _cache_holding(hub, name, seed, ref="main", commit="1" * 40):
    """Hub cache ``hub`` holding model ``name`` (a tiny CLIP of weights drawn with ``seed``) at ``ref``, its
    tokenizer.json naming the cache."""
    repo = hub / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    snapshot = repo / "snapshots" / commit
    torch.manual_seed(seed)
    tiny_hf_clip().save_pretrained(snapshot)
    (snapshot / "tokenizer.json").write_text(json.dumps({"cache": hub.name}))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def _attached(model):
    return mlv.attach(model.eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))


def _unrecorded(model):
    """``model`` recording no commit, as transformers 5.18 and later load it (5.10.2 to 5.17 set config._commit_hash,
    which names the snapshot it was loaded from: its weights need not be compared then)."""
    model.config._commit_hash = None
    return model


def test_a_hub_id_model_takes_the_files_of_the_cache_huggingface_hub_read_not_of_a_later_environment(tmp_path,
                                                                                                     monkeypatch):
    """HF_HOME set after huggingface_hub was imported (os.environ in a notebook): from_pretrained reads the cache
    huggingface_hub.constants fixed at its import, and save_merged took the processor files of the environment's,
    another model's or revision's, silently."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "read"))
    _cache_holding(tmp_path / "read", "org/tiny-clip", seed=0)
    _cache_holding(tmp_path / "env", "org/tiny-clip", seed=1, commit="2" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env"))
    assert hub_caches() == [tmp_path / "read", tmp_path / "env"]
    model = _attached(CLIPModel.from_pretrained("org/tiny-clip", local_files_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # (the model's own weights: nothing to warn of)
        out = mlv.save_merged(model, "a", tmp_path / "merged")
    assert json.loads((out / "tokenizer.json").read_text()) == {"cache": "read"}


def test_a_model_loaded_from_another_cache_dir_is_warned_of_naming_source_dir(tmp_path, monkeypatch):
    """from_pretrained(id, cache_dir=DIR) records neither DIR nor its files: save_merged took the processor files of
    the default cache's snapshot of the id, another revision's, silently. That snapshot's weights are not the
    model's: warned, naming a differing weight, cache_dir and source_dir (the files are still taken: a model whose
    base weights were changed in memory has them right)."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default"))
    _cache_holding(tmp_path / "default", "org/tiny-clip", seed=0)
    _cache_holding(tmp_path / "mine", "org/tiny-clip", seed=1, commit="2" * 40)
    model = _attached(_unrecorded(CLIPModel.from_pretrained("org/tiny-clip", cache_dir=str(tmp_path / "mine"),
                                                            local_files_only=True)))
    with pytest.warns(UserWarning, match=r"save_merged: .*merged: the model was loaded from the hub id "
                                         r"'org/tiny-clip', whose snapshot .*default.*1{40} .*holds other values of "
                                         r"its weight '[\w.]+': .*cache_dir=DIR.*pass source_dir= the snapshot of "
                                         r"the revision"):
        mlv.save_merged(model, "a", tmp_path / "merged")
    src = tmp_path / "mine" / "models--org--tiny-clip" / "snapshots" / ("2" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mlv.save_merged(model, "a", tmp_path / "merged2", source_dir=src)
    assert json.loads((out / "tokenizer.json").read_text()) == {"cache": "mine"}


def test_a_model_recording_a_commit_the_hub_cache_lacks_is_refused_naming_it_and_the_cached_ones(tmp_path,
                                                                                                  monkeypatch):
    """transformers 5.10.2 to 5.17 record the commit a model was loaded at (config._commit_hash): loaded from another
    cache_dir, it is not in the default cache, which holds another commit of the id. That was refused as 'a hub id
    whose files are not in the local hub cache', which holds them at another revision; the refusal names the commit,
    the cache's snapshots and cache_dir."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default"))
    _cache_holding(tmp_path / "default", "org/tiny-clip", seed=0)
    _cache_holding(tmp_path / "mine", "org/tiny-clip", seed=1, commit="2" * 40)
    model = CLIPModel.from_pretrained("org/tiny-clip", cache_dir=str(tmp_path / "mine"), local_files_only=True)
    model.config._commit_hash = "2" * 40   # (as 5.10.2 to 5.17 set it; 5.18 and later record none)
    with pytest.raises(ValueError, match=r"loaded from 'org/tiny-clip', a hub id loaded at the commit 2{40} \(its "
                                         r"config's _commit_hash\), of which the local hub cache \(.*default\) "
                                         r"holds no snapshot, only others: 1{40} \(main\) \(the model was loaded "
                                         r"from another cache, from_pretrained\(\.\.\., cache_dir=DIR\).*"
                                         r"pass source_dir="):
        mlv.save_merged(_attached(model), "a", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_hub_id_not_cached_names_each_cache_looked_in_and_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "read"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env"))
    torch.manual_seed(0)
    clip = tiny_hf_clip()
    clip.name_or_path = clip.config.name_or_path = "org/elsewhere"   # as from_pretrained("org/elsewhere") sets them
    with pytest.raises(ValueError, match=rf"not in the local hub cache \({tmp_path / 'read'} or {tmp_path / 'env'}\)"
                                         r".*pass source_dir= .*with cache_dir=DIR, local_files_only=True"):
        mlv.save_merged(_attached(clip), "a", tmp_path / "merged")


@pytest.mark.parametrize("first", ["one snapshot", "main and an older one"])
def test_a_model_whose_own_snapshot_is_in_the_next_cache_takes_its_files(tmp_path, monkeypatch, first):
    """Helper 551: with no commit recorded, save_merged looked only at the first cache holding the id: where that
    cache's snapshot (its one, or main's among several) held other weights, its files were taken with the "holds
    other values" warning, though the next cache hub_caches lists held the model's own snapshot (hub_snapshot, the
    export's processor note, already walked on to it). The first snapshot holding the model's weights is taken."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "read"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env"))
    _cache_holding(tmp_path / "read", "org/tiny-clip", seed=1)
    if first == "main and an older one":
        _cache_holding(tmp_path / "older", "org/tiny-clip", seed=2, ref="v0", commit="3" * 40)
        shutil.copytree(tmp_path / "older" / "models--org--tiny-clip", tmp_path / "read" / "models--org--tiny-clip",
                        dirs_exist_ok=True)
    _cache_holding(tmp_path / "env", "org/tiny-clip", seed=0, commit="2" * 40)
    model = _attached(_unrecorded(CLIPModel.from_pretrained("org/tiny-clip", cache_dir=str(tmp_path / "env"),
                                                            local_files_only=True)))
    out = _merged_quietly(model, tmp_path / "merged")
    assert json.loads((out / "tokenizer.json").read_text()) == {"cache": "env"}


def _llava_cache_holding(hub, name, shift, commit):
    """Hub cache ``hub`` holding the built-in LLaVA as model ``name``, its weights shifted by ``shift``: its file
    names LLaVA's weights as transformers 5 writes them too (``language_model.model.*``), which the loaded model holds
    renamed (``model.language_model.*``)."""
    repo = hub / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(builtin_llava_dir(), snapshot)
    weights = load_file(snapshot / "model.safetensors")
    save_file({k: v + shift for k, v in weights.items()}, snapshot / "model.safetensors", {"format": "pt"})
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_llava_loaded_from_another_cache_dir_is_warned_of_though_its_weights_are_renamed_on_loading(tmp_path,
                                                                                                       monkeypatch):
    """The comparison looked each of the snapshot's weights up under its name in the file, which no LLaVA-style model
    loaded by transformers 5 holds (it renames ``language_model.model.*`` to ``model.language_model.*``, and so on):
    no weight was compared, and a LLaVA loaded with cache_dir= another cache took the default cache's files silently.
    Each is now looked up under the name from_pretrained gave it; the model's own snapshot warns of nothing."""
    from transformers import LlavaForConditionalGeneration

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default"))
    _llava_cache_holding(tmp_path / "default", "org/tiny-llava", 0.0, "1" * 40)
    _llava_cache_holding(tmp_path / "mine", "org/tiny-llava", 1.0, "2" * 40)
    own = _unrecorded(LlavaForConditionalGeneration.from_pretrained("org/tiny-llava", local_files_only=True))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mlv.save_merged(_attached(own), "a", tmp_path / "own")
    assert not [w for w in seen if "holds other values" in str(w.message)]
    other = _unrecorded(LlavaForConditionalGeneration.from_pretrained(
        "org/tiny-llava", cache_dir=str(tmp_path / "mine"), local_files_only=True))
    with pytest.warns(UserWarning, match=r"'org/tiny-llava', whose snapshot .*default.*1{40} .*holds other values "
                                         r"of its weight 'model\.(language_model|vision_tower|multi_modal_projector)"
                                         r"\.[\w.]+'"):
        mlv.save_merged(_attached(other), "a", tmp_path / "other")


def _rewrite(snapshot, edit):
    """``snapshot``'s model.safetensors with ``edit(weights)`` applied (in place)."""
    weights = load_file(snapshot / "model.safetensors")
    edit(weights)
    save_file(weights, snapshot / "model.safetensors", {"format": "pt"})


def _merged_quietly(model, out):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # (the model's own snapshot: nothing to warn of)
        return mlv.save_merged(model, "a", out)


EMBEDDING = "text_model.embeddings.token_embedding.weight"


def test_a_nan_in_a_compared_row_is_no_other_value(tmp_path, monkeypatch):
    """The weight check compared the first rows with torch.equal, which holds NaN unequal to itself: a model loaded
    from a snapshot whose weight has a NaN in its first row was warned of as loaded from elsewhere (helper 513)."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    snapshot = _cache_holding(tmp_path / "default", "org/tiny-clip", seed=0)
    _rewrite(snapshot, lambda w: w[EMBEDDING][0].__setitem__(0, float("nan")))
    model = _unrecorded(CLIPModel.from_pretrained("org/tiny-clip", local_files_only=True))
    assert model.state_dict()[EMBEDDING][0, 0].isnan()
    _merged_quietly(_attached(model), tmp_path / "merged")


def test_a_model_in_another_dtype_or_dequantized_from_float8_is_not_warned_of(tmp_path, monkeypatch):
    """A bf16 model loaded from an fp32 snapshot compares the file's rows cast as from_pretrained casts them (no
    warning), and another cache's bf16 model is still told. A float8 file's weight that the loader dequantized
    (scaled: here by 2, as a fine-grained FP8 checkpoint's weight_scale_inv does) holds other values than the file's
    float8 ones cast: it was warned of as loaded from elsewhere; float8 beside a wider dtype is not compared now."""
    from transformers import CLIPModel

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "default"))
    snapshot = _cache_holding(tmp_path / "default", "org/tiny-clip", seed=0)
    _cache_holding(tmp_path / "mine", "org/tiny-clip", seed=1, commit="2" * 40)
    load = dict(local_files_only=True, dtype=torch.bfloat16)
    _merged_quietly(_attached(_unrecorded(CLIPModel.from_pretrained("org/tiny-clip", **load))), tmp_path / "bf16")
    other = _unrecorded(CLIPModel.from_pretrained("org/tiny-clip", cache_dir=str(tmp_path / "mine"), **load))
    with pytest.warns(UserWarning, match="holds other values of its weight"):
        mlv.save_merged(_attached(other), "a", tmp_path / "other")

    _rewrite(snapshot, lambda w: w.update({k: w[k].to(torch.float8_e4m3fn) for k in w if k.endswith("proj.weight")}))
    dequantized = _unrecorded(CLIPModel.from_pretrained("org/tiny-clip", local_files_only=True))
    for k, v in dequantized.state_dict().items():
        if k.endswith("proj.weight"):
            v.mul_(2.0)
    _merged_quietly(_attached(dequantized), tmp_path / "fp8")
