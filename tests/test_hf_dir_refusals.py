"""``hf:DIR`` directories broken in one piece each: the refusal names the directory, the piece and the fix, and
comes before the weights are read."""

from __future__ import annotations

import json

import pytest

from mtl_lora_vl.backbones import BackboneError, load_backbone


def _config_only(folder, **config) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("config, names", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),   # text-only
    ({"architectures": ["Blip2ForConditionalGeneration"], "model_type": "blip-2"}, "Blip2ForConditionalGeneration"),
])
def test_a_directory_of_a_family_without_a_backbone_is_named_with_its_config(tmp_path, config, names):
    """The table's refusal named the class only: with several --backbone directories in a sweep, the user could not
    tell which one was refused."""
    folder = _config_only(tmp_path / "not a vlm", **config)
    with pytest.raises(BackboneError) as e:
        load_backbone(f"hf:{folder}")
    said = str(e.value)
    assert said.startswith(f"hf:{folder}: {folder}/config.json names a model this package cannot load")
    assert names in said and "supported: open_clip" in said and "Give --backbone a directory of one of those" in said

