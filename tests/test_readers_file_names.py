"""File names as the readers look them up: a name in the other Unicode normal form, macOS's zip leftovers."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

from PIL import Image

from mtl_lora_vl.data.readers import read_split

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_an_image_named_in_the_other_unicode_form_is_found(tmp_path, caplog):
    """A macOS-made zip names 'café.png' decomposed (NFD), a JSONL written elsewhere composed (NFC): Linux took them
    for two names, and every such image was skipped as "file not found" (1 of the 2 rows here)."""
    _png(tmp_path / "img" / NFD)
    _png(tmp_path / "img" / unicodedata.normalize("NFC", "crème.png"), (10, 200, 10))
    _jsonl(tmp_path / "a.jsonl", [{"image": f"img/{NFC}", "caption": "a red thing"},
                                  {"image": f"img/{NFD}", "caption": "a red square"},
                                  {"image": unicodedata.normalize("NFD", "img/crème.png"), "caption": "green"}])
    with caplog.at_level(logging.WARNING):
        s = read_split("jsonl", tmp_path, file="a.jsonl")
    assert s.skipped == 0 and "unreadable" not in caplog.text
    assert [Path(e.image).name for e in s.examples] == [NFD, NFD, unicodedata.normalize("NFC", "crème.png")]
    assert s.examples[0].captions == ("a red thing", "a red square")   # one image: its captions grouped


def test_a_name_whose_two_unicode_forms_are_two_files_is_not_guessed(tmp_path, caplog):
    """Where the composed and the decomposed name are two files, a row naming neither (a mixed form) is not given
    one of them: it is skipped as missing, as before."""
    mixed = "e\u0301" + unicodedata.normalize("NFC", "é") + ".png"
    _png(tmp_path / unicodedata.normalize("NFC", mixed))
    _png(tmp_path / unicodedata.normalize("NFD", mixed), (10, 200, 10))
    _png(tmp_path / "ok.png")
    _jsonl(tmp_path / "a.jsonl", [{"image": mixed, "caption": "x"}, {"image": "ok.png", "caption": "y"}])
    with caplog.at_level(logging.WARNING):
        s = read_split("jsonl", tmp_path, file="a.jsonl")
    assert s.skipped == 1 and "file not found" in caplog.text
