"""Every option a data reader takes (the keys a spec's ``[data]`` table may hold for its ``format``) is named in
README.md, in backticks, so a reader option is never only in the code."""

from __future__ import annotations

from pathlib import Path

from mtl_lora_vl.data.readers import READERS, reader_option_names

README = Path(__file__).resolve().parent.parent / "README.md"


def undocumented(text: str) -> list[str]:
    """``format: option`` for each reader option ``text`` never names: as `` `option` ``, `` `option = ...` `` or a
    line ``option = ...`` of an example spec."""
    lines = {line.split(" = ")[0] for line in text.splitlines() if " = " in line}
    return [f"{fmt}: {name}" for fmt in READERS for name in sorted(reader_option_names(fmt))
            if f"`{name}`" not in text and f"`{name} =" not in text and name not in lines]


def test_every_reader_option_is_in_the_readme():
    assert not undocumented(README.read_text(encoding="utf-8"))


def test_the_check_sees_an_option_left_out():
    text = README.read_text(encoding="utf-8").replace("`include_restval`", "include_restval")
    assert undocumented(text) == ["karpathy: include_restval"]
