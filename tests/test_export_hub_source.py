"""Helper 455: ``save_merged`` of a Hugging Face model loaded from a hub id, called without ``source_dir``, took its
processor and tokenizer files from the folder the model was loaded from -- none for a hub id -- and wrote a merged
folder without them, which failed only when its processor was loaded. They are now taken from the hub id's snapshot
in the local hub cache (the revision the model was loaded at, no network); where it is not there, save_merged refuses
at once, naming source_dir."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import tiny_hf_clip

import mtl_lora_vl as mlv

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_model(name):
    torch.manual_seed(0)
    clip = tiny_hf_clip().eval()
    clip.name_or_path = clip.config.name_or_path = name   # as from_pretrained(name) sets them
    clip.config._commit_hash = COMMIT
    return mlv.attach(clip, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))


def _cache(root, name, files):
    """A hub cache holding ``files`` in the snapshot COMMIT of model ``name`` (as huggingface_hub lays it out)."""
    repo = root / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for i, (file, text) in enumerate(files.items()):
        (repo / "blobs" / f"b{i}").write_text(text)
        (snapshot / file).symlink_to(f"../../blobs/b{i}")
    return snapshot


def test_a_hub_id_models_processor_files_come_from_the_local_hub_cache(tmp_path, monkeypatch):
    files = {"preprocessor_config.json": json.dumps({"image_processor_type": "CLIPImageProcessor"}),
             "tokenizer.json": '{"vocab": 1}', "config.json": "{}", "model.safetensors": "base weights"}
    _cache(tmp_path / "hub", "org/tiny-clip", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = mlv.save_merged(_hub_model("org/tiny-clip"), "a", tmp_path / "merged")
    assert (out / "tokenizer.json").read_text() == '{"vocab": 1}'
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"
    assert json.loads((out / "config.json").read_text())["model_type"] == "clip"   # the model's own, not the cache's
    assert not (out / "tokenizer.json").is_symlink()


@pytest.mark.parametrize("cached", ["nothing", "another revision"])
def test_a_hub_id_not_in_the_local_hub_cache_is_refused_naming_source_dir(tmp_path, monkeypatch, cached):
    if cached == "another revision":   # (another commit's processor files may differ: not taken)
        snapshot = _cache(tmp_path / "hub", "org/tiny-clip", {"tokenizer.json": "{}"})
        snapshot.rename(snapshot.with_name("f" * 40))
        (tmp_path / "hub" / "models--org--tiny-clip" / "refs" / "main").write_text("f" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    where = (r"whose files are not in the local hub cache" if cached == "nothing" else
             rf"loaded at the commit {COMMIT} \(its config's _commit_hash\), of which the local hub cache "
             rf"\({tmp_path / 'hub'}\) holds no snapshot, only others: f{{40}} \(main\) .*cache_dir=DIR")
    with pytest.raises(ValueError, match=r"save_merged: .*merged: the model was loaded from 'org/tiny-clip', a hub id "
                                         rf"{where}.*pass source_dir= a folder"):
        mlv.save_merged(_hub_model("org/tiny-clip"), "a", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"vocab": 2}')
    out = mlv.save_merged(_hub_model("org/tiny-clip"), "a", tmp_path / "merged", source_dir=src)
    assert (out / "tokenizer.json").read_text() == '{"vocab": 2}'


def test_a_hub_snapshot_holding_only_the_models_own_files_is_refused_naming_source_dir(tmp_path, monkeypatch):
    """Helper 460: from_pretrained of the model alone caches only its config, weights (and code), and that snapshot
    was taken as the source: the merged folder again held no processor or tokenizer file, silently. Refused, naming
    the snapshot and source_dir, before anything is written."""
    snapshot = _cache(tmp_path / "hub", "org/tiny-clip", {"config.json": "{}", "model.safetensors": "base weights",
                                                          "generation_config.json": "{}", "modeling_tiny.py": ""})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"the model was loaded from 'org/tiny-clip', a hub id whose snapshot in the "
                                         rf"local hub cache \({snapshot}\) holds only the model's config and weights, "
                                         r".*pass source_dir= a folder"):
        mlv.save_merged(_hub_model("org/tiny-clip"), "a", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def _revisions(hub, name, revisions):
    """A hub cache holding model ``name`` (a tiny CLIP's config and weights) at each of ``revisions`` (ref name ->
    commit), each snapshot's tokenizer.json naming its ref."""
    repo = hub / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for ref, commit in revisions.items():
        snapshot = repo / "snapshots" / commit
        tiny_hf_clip().save_pretrained(snapshot)
        (snapshot / "tokenizer.json").write_text(json.dumps({"ref": ref}))
        (repo / "refs" / ref).write_text(commit)


def _loaded(hub, name, revision, commit=None):
    """``from_pretrained(name, revision=)`` as a user calls it (offline, from ``hub``), attached, its config recording
    ``commit`` as ``_commit_hash``: None as transformers 5.18 and later record, the snapshot's commit as 5.10.2 to
    5.17 record (set here either way, so both are tested whichever is installed)."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(name, revision=revision, cache_dir=str(hub), local_files_only=True).eval()
    clip.config._commit_hash = commit
    return mlv.attach(clip, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))


def test_a_hub_id_model_of_several_cached_revisions_and_no_main_is_refused_naming_them(tmp_path, monkeypatch):
    """Helper 477: transformers 5 records no revision on a model from_pretrained from a hub id (no config
    _commit_hash; name_or_path is the id alone), and save_merged took the processor files of the cached 'main' for a
    model loaded at 'v1': another revision's tokenizer, silently. With several revisions cached and none of them
    'main' it is refused, each snapshot named, before anything is written."""
    hub = tmp_path / "hub"
    _revisions(hub, "org/tiny-clip", {"v2": "2" * 40, "v1": "1" * 40})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    model = _loaded(hub, "org/tiny-clip", "v1")   # (no _commit_hash: what makes the revision unknowable)
    with pytest.raises(ValueError, match=r"save_merged: .*merged: the model was loaded from the hub id 'org/tiny-clip' "
                                         r"and records no revision .* holds 2 snapshots of it and no 'main'.*1{40} "
                                         r"\(v1\); .*2{40} \(v2\)\. .*pass source_dir= the snapshot of the revision"):
        mlv.save_merged(model, "a", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_hub_id_model_recording_its_commit_takes_that_snapshots_files_of_several_without_a_warning(tmp_path,
                                                                                                     monkeypatch):
    """transformers 5.10.2 to 5.17 record the commit a model was loaded at (config._commit_hash), which the tests of
    several revisions above drop (5.18 and later record none): that revision's files are taken, of several revisions
    and no 'main' or beside 'main', without a warning."""
    hub = tmp_path / "hub"
    _revisions(hub, "org/tiny-clip", {"v2": "2" * 40, "v1": "1" * 40})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mlv.save_merged(_loaded(hub, "org/tiny-clip", "v1", commit="1" * 40), "a", tmp_path / "merged")
        assert json.loads((out / "tokenizer.json").read_text()) == {"ref": "v1"}
        (hub / "models--org--tiny-clip" / "refs" / "main").write_text("2" * 40)
        out = mlv.save_merged(_loaded(hub, "org/tiny-clip", "v1", commit="1" * 40), "a", tmp_path / "merged2")
        assert json.loads((out / "tokenizer.json").read_text()) == {"ref": "v1"}


def test_a_hub_id_model_of_several_cached_revisions_takes_mains_files_and_warns(tmp_path, monkeypatch):
    """Several revisions cached, 'main' among them (an old one stays cached after the hub's moved on): refusing
    (as helper 477 first did) stopped the usual case, a model loaded by id alone, which from_pretrained loads at
    'main'. main's files are taken, with a warning naming the others and source_dir for a model loaded at one."""
    hub = tmp_path / "hub"
    _revisions(hub, "org/tiny-clip", {"main": "2" * 40, "v1": "1" * 40})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    model = _loaded(hub, "org/tiny-clip", None)
    with pytest.warns(UserWarning, match=r"records no revision.*taken from the 'main' snapshot .*2{40}.*of the 2 .*"
                                         r"1{40} \(v1\).*If it was loaded at another revision, pass source_dir="):
        mlv.save_merged(model, "a", tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "tokenizer.json").read_text()) == {"ref": "main"}


def test_a_hub_id_model_whose_only_cached_revision_is_not_main_takes_that_snapshots_files(tmp_path, monkeypatch):
    """Helper 477: a model loaded at 'v1', the only revision in the cache, was refused as 'not in the local hub cache'
    (the lookup asked for 'main', which was never fetched); its one snapshot is the one it was loaded from."""
    hub = tmp_path / "hub"
    _revisions(hub, "org/tiny-clip", {"v1": "1" * 40})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    out = mlv.save_merged(_loaded(hub, "org/tiny-clip", "v1"), "a", tmp_path / "merged")
    assert json.loads((out / "tokenizer.json").read_text()) == {"ref": "v1"}


def test_a_main_snapshot_holding_only_the_models_files_is_refused_without_a_warning_that_it_was_taken(
        tmp_path, monkeypatch):
    """Several revisions cached, main's holding only the model's config and weights: save_merged warned that main's
    processor files were taken, then refused main as holding none. Refused alone now."""
    hub = tmp_path / "hub"
    _revisions(hub, "org/tiny-clip", {"main": "2" * 40, "v1": "1" * 40})
    (hub / "models--org--tiny-clip" / "snapshots" / ("2" * 40) / "tokenizer.json").unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    model = _loaded(hub, "org/tiny-clip", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"holds only the model's config and weights.*pass source_dir="):
            mlv.save_merged(model, "a", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
