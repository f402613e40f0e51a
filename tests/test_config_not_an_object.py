"""MTLLoRAConfig.from_json of a file holding a JSON list or string named its items as unknown fields
("unknown config field(s) ['vqa']"), not the file's shape."""

from __future__ import annotations

import pytest

from mtl_lora_vl.config import ConfigError, MTLLoRAConfig


@pytest.mark.parametrize("text, kind", [('["vqa", "retrieval"]', "list"), ('"vqa"', "str")])
def test_a_config_file_that_is_not_an_object_is_refused_by_its_shape(tmp_path, text, kind):
    path = tmp_path / "mtl_lora_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf'a config must be an object of fields, e.g. \{{"tasks": .*got a {kind}'):
        MTLLoRAConfig.from_json(path)
