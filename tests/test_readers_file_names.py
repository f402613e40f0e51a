"""File names as the readers look them up: a name in the other Unicode normal form, macOS's zip leftovers."""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path

from PIL import Image

from mtl_lora_vl.data.common import resolve_under
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


def test_a_macos_zips_folder_is_no_class_of_an_imagefolder(tmp_path, caplog):
    """A zip made on macOS unpacks a __MACOSX/ folder (AppleDouble "._1.png" files) beside the class folders: it
    became class 0 of no image (warned), so every real class's label was shifted by one and '__MACOSX' was among a
    zero-shot classifier's choices."""
    base = tmp_path / "folder"
    for cls in ("cat", "dog"):
        _png(base / cls / "1.png")
        (base / "__MACOSX" / cls).mkdir(parents=True)
        (base / "__MACOSX" / cls / "._1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (base / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (base / "cat" / "__MACOSX").mkdir()   # a class folder zipped on its own, unpacked in place
    _png(base / "cat" / "__MACOSX" / "2.png")
    with caplog.at_level(logging.INFO, logger="mtl_lora_vl.data.readers"):
        s = read_split("imagefolder", tmp_path, folder="folder")
    assert s.class_names == ["cat", "dog"]
    assert sorted((e.label, Path(e.image).name) for e in s.examples) == [(0, "1.png"), (1, "1.png")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("__MACOSX" in r.getMessage() for r in caplog.records) == 1


def test_an_image_there_under_a_non_ascii_name_costs_no_more_disk_lookups_than_an_ascii_one(tmp_path, monkeypatch):
    """The other-normal-form lookup asked whether a non-ASCII name was there before resolving it, so every image of
    such a data set (all there) cost one stat more than an ASCII name (7 stat/lstat calls against 6 here). A name
    that is there is now resolved once, strictly: no more lookups than an ASCII name of the same folders."""
    (tmp_path / "img").mkdir()
    for name in ("plain.png", NFC):
        (tmp_path / "img" / name).touch()
    root = tmp_path.resolve()
    calls: list[str] = []
    for fn in ("stat", "lstat"):
        real = getattr(os, fn)
        monkeypatch.setattr(os, fn, lambda *a, _real=real, _fn=fn, **k: (calls.append(_fn), _real(*a, **k))[1])

    def lookups(name: str) -> int:
        calls.clear()
        assert resolve_under(root, f"img/{name}") == root / "img" / name
        return len(calls)

    assert lookups(NFC) <= lookups("plain.png")


def test_a_path_whose_folder_and_file_are_in_different_unicode_forms_is_found(tmp_path, caplog):
    """A folder made on macOS (NFD) holding files copied in from Linux (NFC): the row's path, in either single form,
    matched neither whole form on disk, and the image was skipped as "file not found" (2 of the 2 rows here). Each
    part is now taken in the form it is there."""
    folder, file = unicodedata.normalize("NFD", "crème"), NFC
    _png(tmp_path / "img" / folder / file)
    _jsonl(tmp_path / "a.jsonl", [{"image": unicodedata.normalize(form, f"img/crème/{NFC}"), "caption": form}
                                  for form in ("NFC", "NFD")])
    with caplog.at_level(logging.WARNING):
        s = read_split("jsonl", tmp_path, file="a.jsonl")
    assert s.skipped == 0 and "file not found" not in caplog.text
    assert [e.image for e in s.examples] == [str((tmp_path / "img" / folder / file).resolve())] * 2
    assert s.examples[0].captions == ("NFC", "NFD")   # one image: its two rows' captions grouped
