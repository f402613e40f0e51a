"""MTLLoRAConfig.from_json of a file holding a JSON list or string named its items as unknown fields
("unknown config field(s) ['vqa']"), not the file's shape; and then it did not name the file (a loader reading
several adapters' configs left the user to guess which one)."""

from __future__ import annotations

import re

import pytest

from mtl_lora_vl.config import ConfigError, MTLLoRAConfig


@pytest.mark.parametrize("text, kind", [('["vqa", "retrieval"]', "list"), ('"vqa"', "str")])
def test_a_config_file_that_is_not_an_object_is_refused_by_its_shape(tmp_path, text, kind):
    path = tmp_path / "mtl_lora_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf'^{re.escape(str(path))}: a config must be an object of fields, e.g. '
                                          rf'\{{"tasks": .*got a {kind}'):
        MTLLoRAConfig.from_json(path)


def test_a_bad_field_of_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "mtl_lora_config.json"
    path.write_text('{"tasks": ["vqa"], "rank": 4}')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown config field\(s\) \['rank'\]"):
        MTLLoRAConfig.from_json(path)
    path.write_text('{"tasks": ["vqa"], "r": 0}')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: r: must be an integer >= 1, got 0$"):
        MTLLoRAConfig.from_json(path)
    with pytest.raises(ConfigError, match=r"^r: must be an integer >= 1"):   # JSON text: no file to name
        MTLLoRAConfig.from_json('{"tasks": ["vqa"], "r": 0}')
