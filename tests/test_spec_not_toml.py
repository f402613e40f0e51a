"""A spec file that is not valid TOML is refused naming the file, the line and the fix; a YAML or JSON spec (this
package reads TOML only) is told so, not only that TOML rejected its first line."""

from __future__ import annotations

import pytest

from mtl_lora_vl.tasks import SpecError, load_spec


def test_broken_toml_names_file_line_and_fix(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nkind = "vqa\n[data]\nsource = "builtin"\n')
    with pytest.raises(SpecError, match=r"broken\.toml: not valid TOML: .*line 2.*; fix the TOML there \(`key = "
                                        r"value`, strings in double quotes"):
        load_spec(path)


@pytest.mark.parametrize("suffix, fmt", [(".yaml", "YAML"), (".yml", "YAML"), (".json", "JSON")])
def test_yaml_or_json_spec_is_told_specs_are_toml(tmp_path, suffix, fmt):
    path = tmp_path / f"task{suffix}"
    yaml = "name: x\nkind: vqa\ndata:\n  source: builtin\n"
    path.write_text('{"name": "x", "kind": "vqa"}\n' if fmt == "JSON" else yaml)
    with pytest.raises(SpecError, match=rf"task\{suffix}: not valid TOML: .*line 1.*; task specs are TOML, not {fmt}"):
        load_spec(path)
