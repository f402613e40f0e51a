"""save_adapter keeps a ``base['backbone']`` it cannot parse as the caller wrote it, but a typo of a built-in name
(``'builtn'``) or a folder without its ``hf:`` / ``open_clip:`` prefix was saved without a word and caught only by
``load_pretrained``. It is now warned of at save time, naming the spec, parse_spec's hint and the fix, and still
saved (``backbone=`` loads it). Specs this package builds, and those with a known prefix whose folder may be on the
machine that loads them, are not warned of."""

from __future__ import annotations

import warnings

import pytest

import mtl_lora_vl as mlv


@pytest.fixture(scope="module")
def adapted():
    bb = mlv.backbones.load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2))
    return bb.model


def test_a_misspelt_builtin_is_warned_of_and_still_saved(adapted, tmp_path):
    with pytest.warns(UserWarning, match=r"^save_adapter: base\['backbone'\] = 'builtn' is no backbone load_pretrained "
                                         r"can build \(unknown backbone spec 'builtn' \(did you mean 'builtin'\?\)\); "
                                         r"it is saved as written.*'hf:/path/to/dir'$"):
        out = mlv.save_adapter(adapted, tmp_path / "adapter", base={"backbone": "builtn"})
    assert mlv.read_adapter_config(out)["base"] == {"backbone": "builtn"}
    assert mlv.load_pretrained(out, backbone="builtin", heads=False).config.tasks == ["vqa"]


def test_a_folder_without_its_prefix_is_warned_of_with_the_prefixes(adapted, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.warns(UserWarning, match=r"is a folder: write hf:.*model for a Hugging Face model directory"):
        mlv.save_adapter(adapted, tmp_path / "adapter", base={"backbone": str(tmp_path / "model")})


def test_a_spec_whose_folder_test_raises_oserror_is_warned_of_and_still_saved(adapted, tmp_path):
    """A name past the file system's limit: parse_spec's folder test raises OSError (File name too long), not
    ValueError; it is warned of like any spec that cannot be built, not raised out of save_adapter."""
    long_name = "b" * 300
    with pytest.warns(UserWarning, match=r"^save_adapter: base\['backbone'\] = 'b{300}' is no backbone "):
        out = mlv.save_adapter(adapted, tmp_path / "adapter", base={"backbone": long_name})
    assert mlv.read_adapter_config(out)["base"] == {"backbone": long_name}


# (" hf:~user/..." : a folder of a user of another machine, which parse_spec cannot expand here: a known prefix,
# after the space a caller may leave before it, is not warned of)
@pytest.mark.parametrize("base", [{"backbone": "builtin"}, {"backbone": " builtin-llava"}, {"backbone": "hf:./nowhere"},
                                  {"backbone": "open_clip:./nowhere"}, {"backbone": "open_clip:ViT-B-32"},
                                  {"backbone": " hf:~no_such_user_h552/model"}, {"pretrained": None}, None])
def test_specs_it_builds_or_with_a_known_prefix_are_not_warned_of(adapted, tmp_path, monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlv.save_adapter(adapted, tmp_path / "adapter", base=base)
