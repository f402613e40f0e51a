"""Images that fail to decode never stop a run: read-time checks, worker-side replacement, strict mode,
and no leaked file handles. The broken files are written here from a real (libjpeg-encoded) JPEG."""

from __future__ import annotations

import gc
import json
import logging
import pickle
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lora_vl.data.fallback import ImageFallback
from mtl_lora_vl.data.images import ImageError, load_image, to_rgb, to_uint8_tensor, verify_image
from mtl_lora_vl.data.loader import MultiTaskLoader, TaskDataset, iter_image_batches
from mtl_lora_vl.data.readers import read_split
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.tasks.spec import load_spec

SIZE = 16


def _real_jpeg(path: Path, seed: int = 0) -> bytes:
    """A photo-like 96x64 JPEG: smooth gradients plus noise, so the entropy-coded data is substantial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:96]
    arr = np.stack([x * 255 / 96, y * 255 / 64, (x + y) % 256], -1) + rng.normal(0, 20, (64, 96, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.read_bytes()


def _scan_middle(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + (len(data) - sos) // 2


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "data" / "img"
    d.mkdir(parents=True)
    paths = {}
    for i in range(4):
        paths[f"good{i}"] = d / f"good{i}.jpg"
        _real_jpeg(paths[f"good{i}"], seed=i)
    data = paths["good0"].read_bytes()
    paths["truncated"] = d / "truncated.jpg"
    paths["truncated"].write_bytes(data[: _scan_middle(data)])
    # A frame marker in the middle of the compressed data: the header and the end marker are intact,
    # but libjpeg stops with a fatal error when it reaches it.
    mid = _scan_middle(data)
    paths["corrupt"] = d / "corrupt.jpg"
    paths["corrupt"].write_bytes(data[:mid] + b"\xff\xc0\x00\x11" + data[mid + 4:])
    return paths


def test_read_time_check_levels(images):
    assert verify_image(images["good0"]) == (96, 64)
    with pytest.raises(ImageError, match=r"truncated\.jpg: cannot be decoded.*truncated"):
        verify_image(images["truncated"])
    # Damage inside an otherwise complete file needs a full decode to show.
    assert verify_image(images["corrupt"]) == (96, 64)
    with pytest.raises(ImageError, match=r"corrupt\.jpg: cannot be decoded"):
        verify_image(images["corrupt"], decode=True)
    with pytest.raises(ImageError, match=r"corrupt\.jpg: cannot be decoded"):
        load_image(images["corrupt"])
    # Trailing data after the end marker is not damage: the suspicious end triggers a decode, which passes.
    trailer = images["good0"].with_name("trailer.jpg")
    trailer.write_bytes(images["good0"].read_bytes() + b"SEFH" + bytes(100))
    assert verify_image(trailer) == (96, 64)
    # In-memory bytes are checked the same way.
    assert verify_image(images["good1"].read_bytes()) == (96, 64)
    with pytest.raises(ImageError, match="in-memory image>: cannot be decoded"):
        verify_image(images["truncated"].read_bytes())


def test_truncated_png_and_gif_are_caught(tmp_path):
    for fmt in ("PNG", "GIF", "WEBP", "BMP"):
        p = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p, fmt)
        verify_image(p)
        p.write_bytes(p.read_bytes()[:-30])
        with pytest.raises(ImageError, match=f"x.{fmt.lower()}"):
            verify_image(p)


def _write_rows(root: Path, images: dict[str, Path], names: list[str]) -> None:
    rows = [{"image": f"img/{images[n].name}", "label": i % 2} for i, n in enumerate(names)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _skipped_warning(caplog) -> str:
    msgs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(msgs) == 1, msgs
    caplog.clear()
    return msgs[0]


def test_readers_skip_or_fail_on_bad_images(images, caplog):
    root = images["good0"].parent.parent
    _write_rows(root, images, ["good0", "truncated", "corrupt", "good1"])
    caplog.set_level(logging.WARNING, logger="mtl_lora_vl.data")
    s = read_split("jsonl", root, file="rows.jsonl")
    assert re.search(r"skipped 1 unreadable image.*truncated\.jpg", _skipped_warning(caplog))
    assert [Path(e.image).name for e in s.examples] == ["good0.jpg", "corrupt.jpg", "good1.jpg"]
    assert s.skipped == 1 and s.strict is False
    s = read_split("jsonl", root, file="rows.jsonl", verify="decode")
    assert re.search(r"skipped 2 unreadable image.*truncated\.jpg.*corrupt\.jpg", _skipped_warning(caplog))
    assert len(s.examples) == 2
    with pytest.raises(ImageError, match=r"truncated\.jpg: cannot be decoded"):
        read_split("jsonl", root, file="rows.jsonl", strict=True)
    with pytest.raises(ValueError, match="'verify' must be true, false or \"decode\""):
        read_split("jsonl", root, file="rows.jsonl", verify="full")


class _Kind:
    name = "cls"
    uses_text = False

    def sample_text(self, example):
        return None

    def sample_fields(self, example, index):
        return {"labels": torch.tensor(example.label)}


class _Backbone:
    image_size = SIZE

    def tokenizer(self, texts):
        return torch.zeros(len(texts), 4, dtype=torch.long)

    def preprocess_uint8(self, images, dtype):
        return images.to(dtype) / 255


def _split(images, names, strict=False) -> Split:
    return Split([Example(str(images[n]), n, label=i) for i, n in enumerate(names)], strict=strict)


NAMES = ["good0", "truncated", "good1", "corrupt", "good2", "good3"]
BAD = {1, 3}


def test_training_rows_with_broken_images_are_replaced(images, caplog):
    ds = TaskDataset(_Kind(), _split(images, NAMES), SIZE)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data.fallback"):
        rows = [ds[i] for i in range(len(NAMES))] + [ds[1], ds[3]]      # bad rows asked for twice
    for asked, row in zip([*range(len(NAMES)), 1, 3], rows):
        assert row["index"] not in BAD
        if asked not in BAD:
            assert row["index"] == asked
        assert torch.equal(row["image"], to_uint8_tensor(images[NAMES[row["index"]]], SIZE))
        assert int(row["fields"]["labels"]) == row["index"]             # the whole row is the substitute
    assert ds[1]["index"] == rows[1]["index"]                            # deterministic replacement
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2                                              # once per file
    assert "truncated.jpg: cannot be decoded" in warned[0] and "'cls'" in warned[0]
    assert "corrupt.jpg: cannot be decoded" in warned[1] and "strict = true" in warned[1]
    assert ds.images.replaced == 5                                       # every replaced row counted
    assert [Path(f).name for f in ds.images.failed_files()] == ["truncated.jpg", "corrupt.jpg"]


def test_training_loader_with_workers_goes_on(images):
    loader = MultiTaskLoader([_Kind()], [_split(images, NAMES)], _Backbone(), batch_size=3, steps=4,
                             num_workers=2, pin_memory=False)
    batches = list(loader)
    assert len(batches) == 4
    assert all(b["images"].shape == (3, 3, SIZE, SIZE) for b in batches)
    assert not BAD & {int(i) for b in batches for i in b["indices"]}
    fb = loader.datasets[0].images                  # counted across the worker processes
    assert fb.replaced >= 1 and {Path(f).name for f in fb.failed_files()} <= {"truncated.jpg", "corrupt.jpg"}


def test_strict_fails_at_once_naming_the_file(images):
    ds = TaskDataset(_Kind(), _split(images, NAMES, strict=True), SIZE)
    assert ds[0]["index"] == 0
    with pytest.raises(ImageError, match=r"example 'truncated'.*truncated\.jpg: cannot be decoded.*strict = true"):
        ds[1]
    with pytest.raises(ImageError, match=r"task 'val'.*corrupt\.jpg: cannot be decoded.*strict = true"):
        list(iter_image_batches(_Backbone(), _split(images, ["good0", "corrupt"]).examples, batch_size=2,
                                device="cpu", strict=True, task="val"))


def test_a_strict_stop_in_a_worker_keeps_its_one_line_message(images):
    """With loader workers, PyTorch re-raised the ImageError as 'Caught ImageError in DataLoader worker process 0.'
    plus the worker's traceback, which the command line printed as its one-line error."""
    loader = MultiTaskLoader([_Kind()], [_split(images, NAMES, strict=True)], _Backbone(), batch_size=3, steps=4,
                             num_workers=1, pin_memory=False)
    try:
        with pytest.raises(ImageError) as e:
            list(loader)
    finally:
        loader.close()
    assert re.match(r"task 'cls': example '(truncated|corrupt)'.*cannot be decoded.*strict = true", str(e.value))
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageError) as e:
        list(iter_image_batches(_Backbone(), _split(images, ["good0", "corrupt"]).examples, batch_size=2,
                                device="cpu", strict=True, task="val", num_workers=1))
    assert str(e.value).startswith("task 'val': ") and "Traceback" not in str(e.value)


def test_no_image_decodes_is_an_error(images):
    ds = TaskDataset(_Kind(), _split(images, ["truncated", "corrupt"]), SIZE)
    with pytest.raises(ImageError, match=r"task 'cls': no image of its 2 example\(s\) can be decoded"):
        ds[0]


def test_evaluation_batches_keep_going(images, caplog):
    examples = _split(images, NAMES).examples
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data.fallback"):
        batches = list(iter_image_batches(_Backbone(), examples, batch_size=4, device="cpu", task="val"))
    out = torch.cat(batches)
    assert out.shape == (len(NAMES), 3, SIZE, SIZE)                      # rows stay aligned with the split
    for i in set(range(len(NAMES))) - BAD:
        assert torch.equal(out[i], to_uint8_tensor(images[NAMES[i]], SIZE).float() / 255)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("cannot be decoded" in m and "substitute" not in m for m in msgs) == 2
    assert any("task 'val': 2 row(s) used a substitute image because 2 image(s)" in m for m in msgs)


def test_a_shard_replaces_a_broken_image_as_one_process_does(images):
    from mtl_lora_vl.distributed import Shard

    examples = _split(images, NAMES).examples
    whole = torch.cat(list(iter_image_batches(_Backbone(), examples, batch_size=4, device="cpu", task="val")))
    for start, stop in ((0, 3), (3, len(examples))):   # two ranks' shards (map_shards passes a Shard)
        part = torch.cat(list(iter_image_batches(_Backbone(), Shard(examples, start, stop), batch_size=2,
                                                 device="cpu", task="val")))
        assert torch.equal(part, whole[start:stop])
        alone = torch.cat(list(iter_image_batches(_Backbone(), examples[start:stop], batch_size=2, device="cpu",
                                                  task="val")))
        assert not torch.equal(alone, whole[start:stop])   # as a plain list, its own rows held the substitutes


def test_a_rank_muted_by_main_rank_logging_still_says_which_images_of_its_shard_failed(images, caplog, monkeypatch):
    """Sharded evaluation runs under main_rank_logging: rank 1's reasons (per file) and its count of substitutes were
    dropped with the warnings every rank says alike (the rows left out were counted right, from all ranks)."""
    from mtl_lora_vl.distributed import Shard
    from mtl_lora_vl.log import main_rank_logging

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    examples = _split(images, NAMES).examples
    said = {}
    for level in (logging.ERROR, logging.WARNING):   # (at -q, not said on any rank)
        caplog.clear()
        with caplog.at_level(level, logger="mtl_lora_vl"), main_rank_logging(False):
            list(iter_image_batches(_Backbone(), Shard(examples, 3, 6), batch_size=2, device="cpu", task="val"))
            logging.getLogger("mtl_lora_vl.data.rows").warning("alike on every rank")   # rank 0 says it
        said[level] = [r.getMessage() for r in caplog.records]
    assert not said[logging.ERROR] and "alike on every rank" not in caplog.text
    *files, count = said[logging.WARNING]   # its row's file, and one a substitute was drawn from first (whole split)
    for m, name in zip(files, ("corrupt", "truncated"), strict=True):
        assert re.fullmatch(rf"rank 1: task 'val': example '{name}': .*{name}\.jpg.*; its rows are replaced .*", m)
    assert count.startswith("rank 1: task 'val': 1 row(s) used a substitute image because 2 image(s) cannot be used")
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_task_evaluation_reports_substitutes_at_the_end_of_the_pass(images, tmp_path, caplog):
    """The per-pass summary of replaced rows comes from the image generator's end, which VQA's and the
    generative path's loops never reached (a zip with a range stops first)."""
    from mtl_lora_vl.tasks.generative import generate_texts

    class Gen(_Backbone):
        def generate(self, imgs, max_len, beam_size, prompts):
            return ["x"] * imgs.shape[0]

    examples = _split(images, NAMES).examples
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data.fallback"):
        generate_texts(Gen(), examples, ["p"] * len(examples), max_len=2, batch_size=4, device="cpu")
    assert any("2 row(s) used a substitute image" in r.getMessage() for r in caplog.records)


def test_spec_strict_reaches_the_loader(images, tmp_path):
    root = images["good0"].parent.parent
    _write_rows(root, images, NAMES)
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text('kind = "classification"\n[data]\nformat = "jsonl"\nstrict = true\nverify = false\n'
                         '[data.train]\nfile = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n')
    split = load_spec(spec_file).load_split("train", root)
    assert split.strict and len(split.examples) == len(NAMES)
    with pytest.raises(ImageError, match=r"truncated\.jpg"):
        TaskDataset(_Kind(), split, SIZE)[1]
    spec_file.write_text(spec_file.read_text().replace("verify = false\n", ""))
    with pytest.raises(ImageError, match=r"truncated\.jpg"):             # caught when the split is read
        load_spec(spec_file).load_split("train", root)


def test_fallback_pickles_without_shared_state():
    import pickle

    fb = ImageFallback("t", [Example("/nonexistent.png", "a")], SIZE)
    back = pickle.loads(pickle.dumps(fb))
    assert back.replaced == 0 and back.task == "t"


def test_no_file_handle_is_left_open(images, tmp_path):
    gif = tmp_path / "one.gif"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(gif)
    anim = tmp_path / "anim.gif"
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    frames[0].save(anim, save_all=True, append_images=frames[1:])
    png = tmp_path / "a.png"
    Image.new("RGBA", (20, 10)).save(png)
    sources = [gif, anim, png, images["good0"], images["truncated"], images["corrupt"]]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", ResourceWarning)
        for src in sources:
            for call in (lambda s: load_image(s), lambda s: load_image(s, 8), verify_image,
                         lambda s: verify_image(s, decode=True), lambda s: to_uint8_tensor(s, 8)):
                try:
                    call(src)
                except ImageError:
                    pass
        ds = TaskDataset(_Kind(), Split([Example(str(s), str(i), label=0) for i, s in enumerate(sources)]), 8)
        for i in range(len(sources)):
            ds[i]
        gc.collect()
    leaks = [str(w.message) for w in rec if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


def test_task_evaluation_goes_on_or_stops_with_strict(images, tmp_path, caplog):
    """Through a task kind's evaluate(): the split's strict flag and the task name reach the loader."""
    from vl_tiny import tiny_backbone

    from mtl_lora_vl.tasks import build_kind

    root = images["good0"].parent.parent
    _write_rows(root, images, NAMES)
    spec_file = tmp_path / "pets.toml"
    spec_file.write_text('kind = "classification"\n[data]\nformat = "jsonl"\nverify = false\n'
                         '[data.train]\nfile = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n')
    spec = load_spec(spec_file)
    backbone = tiny_backbone(tmp_path / "bb")
    split = spec.load_split("val", root)
    kind = build_kind(spec, split, backbone)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        out = kind.evaluate(backbone, None, split, batch_size=4, device="cpu")
    assert any("task 'pets': 2 row(s) used a substitute image" in r.getMessage() for r in caplog.records)
    # The substitutes kept their rows' labels, so those rows were scored on another row's image: they are
    # left out, and the scores are those of the split without them.
    assert "task 'pets': 2 evaluation row(s) whose image cannot be used are left out" in caplog.text
    good = Split([ex for i, ex in enumerate(split.examples) if i not in BAD], class_names=split.class_names)
    assert out == kind.evaluate(backbone, None, good, batch_size=4, device="cpu") and out["n"] == len(NAMES) - 2
    # Evaluated again (the adapted pass, each validation): the rows are left out up front, in one pass, not decoded
    # and warned about per file again
    caplog.clear()
    passes = []
    inner = kind._evaluate
    kind._evaluate = lambda *a, **kw: passes.append(1) or inner(*a, **kw)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        assert kind.evaluate(backbone, None, split, batch_size=4, device="cpu") == out
    assert len(passes) == 1 and "substitute image" not in caplog.text and "cannot be decoded" not in caplog.text
    assert "task 'pets': 2 evaluation row(s) whose image cannot be used are left out" in caplog.text

    def written_before_predictions(backbone, head, split, *, batch_size, device, dtype, num_workers):
        return inner(backbone, head, split, batch_size=batch_size, device=device, dtype=dtype, num_workers=num_workers)

    kind._evaluate = written_before_predictions   # a kind without `records` scores as before where none are asked
    assert kind.evaluate(backbone, None, split, batch_size=4, device="cpu") == out
    del kind._evaluate
    strict = Split(split.examples, class_names=split.class_names, strict=True)
    with pytest.raises(ImageError, match=r"task 'pets'.*truncated\.jpg: cannot be decoded.*strict = true"):
        kind.evaluate(backbone, None, strict, batch_size=4, device="cpu")


def test_a_thin_image_is_refused_before_its_resize_allocates(tmp_path):
    # 1 x 30,000 px is 60 KB decoded, but scaled to a short side of 224 it is 224 x 6.7 million pixels
    # (4.5 GB) before the crop: the worker died of memory, which no fallback catches. Now an ImageError.
    path = tmp_path / "thin.png"
    Image.new("RGB", (1, 30_000), (10, 20, 30)).save(path)
    with pytest.raises(ImageError, match=r"thin\.png: 1x30000 pixels would be resized to 224x6720000"
                                         r".*crop or shrink it"):
        to_uint8_tensor(str(path), 224)
    with pytest.raises(ImageError, match=r"thin\.png: .* aspect ratio is too extreme"):
        load_image(str(path), 224)
    assert to_uint8_tensor(str(path), 8).shape == (3, 8, 8)   # 8 x 240,000 px: allowed


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_png_transparency_is_composited_on_white_in_every_mode(mode, tmp_path):
    path = tmp_path / f"{mode}.png"
    img = Image.new(mode, (8, 8), 0)
    img.save(path, transparency=(0, 0, 0) if mode == "RGB" else 0)   # a tRNS chunk: colour 0 is transparent
    assert to_uint8_tensor(str(path), 8)[:, 0, 0].tolist() == [255, 255, 255]


def test_only_image_formats_are_decoded_whatever_the_name(tmp_path, monkeypatch):
    """Pillow picks a decoder from the content: a PostScript file named .jpg reached Ghostscript (untrusted data)."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(1))
    path = tmp_path / "not_really.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                     b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    for check in (verify_image, lambda p: to_uint8_tensor(p, 8)):
        with pytest.raises(ImageError, match="not a readable image"):
            check(path)
    assert calls == []


def test_a_photo_with_a_malformed_exif_tag_decodes_upright(tmp_path):
    """ImageOps.exif_transpose rewrites the EXIF block and raised on a malformed tag: the row was replaced (or a
    strict run stopped) though the pixels and the orientation read fine."""
    import io

    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8))
    exif = base.getexif()
    exif[0x0112] = 6   # rotate 90° clockwise to display
    exif[0x010F] = "Canon"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00"}
    raw = exif.tobytes()
    buf = io.BytesIO()
    base.save(buf, "JPEG", exif=raw)
    good = buf.getvalue()
    start = good.index(b"Exif\x00\x00") + 6
    bad = bytearray(good)
    bad[start + 11] = 0   # one byte of the tag table (found by mutation: exif_transpose then raises)
    path = tmp_path / "bad_exif.jpg"
    path.write_bytes(bytes(bad))
    from PIL import ImageOps

    with pytest.raises(Exception):   # noqa: B017 - whatever Pillow raises: what the package no longer calls
        ImageOps.exif_transpose(Image.open(path))
    assert to_uint8_tensor(path, 16).shape == (3, 16, 16)
    assert load_image(path).size == (32, 48)   # turned upright by the orientation tag (48 x 32 stored)


def test_a_dark_16_bit_pgm_is_scaled_by_its_depth(tmp_path):
    """A 16-bit PGM opens in mode "I": a dark one (max <= 255) was taken for 8-bit, 256x too bright."""
    path = tmp_path / "dark16.pgm"
    path.write_bytes(b"P5\n2 2\n65535\n" + (40000).to_bytes(2, "big") * 1 + (200).to_bytes(2, "big") * 3)
    px = np.asarray(load_image(path))
    assert px[0, 0, 0] == 40000 * 255 // 65535 and px[1, 1, 0] == 0
    dark = tmp_path / "dark_only.pgm"
    dark.write_bytes(b"P5\n2 2\n65535\n" + (200).to_bytes(2, "big") * 4)
    assert np.asarray(load_image(dark)).max() == 0   # 200 / 65535 of white, not 200 / 255


def test_a_16_bit_grey_png_with_a_transparent_level_is_composited_on_white(tmp_path):
    """A 16-bit grey PNG's tRNS names one grey level transparent; it was ignored (those pixels kept their stored
    near-black), where every other transparency is composited on white. ``alpha="drop"`` keeps the stored level,
    as open_clip's conversion does."""
    from mtl_lora_vl.data.images import to_rgb

    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 1000], [65535, 1000]], dtype=np.uint16)).save(path, transparency=1000)
    with Image.open(path) as img:
        img.load()
        assert img.mode == "I;16" and img.info["transparency"] == 1000
        assert np.asarray(to_rgb(img))[..., 0].tolist() == [[0, 255], [255, 255]]
        assert np.asarray(to_rgb(img, "drop"))[..., 0].tolist() == [[0, 3], [255, 3]]
    assert np.asarray(load_image(path))[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("clear, blue", [((0x0100, 0x0100, 0x01FF), (0, 0, 0xFFFF)),
                                         ((0x0001, 0x0001, 0x00FF), (0x0100, 0x0100, 0xFFFF))])
def test_a_16_bit_rgb_png_with_a_transparent_colour_is_composited_on_white(tmp_path, clear, blue):
    """A 16-bit RGB PNG's tRNS colour: Pillow reads each sample as its high byte but compared the colour's low bytes,
    so with tRNS (0x0100, 0x0100, 0x01ff) the transparent pixels stayed (1, 1, 1) and the blue (0, 0, 0xffff) ones,
    whose 8 bits (0, 0, 255) are those low bytes, went white. A colour under 256 in every sample, (1, 1, 0xff), is
    no sign of 16 bits: the file's sample depth says it (the transparent pixels stayed (0, 0, 0), and (1, 1, 255)
    went white)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\x00" + b"".join(struct.pack(">HHH", *p) for p in (clear, blue))
    path = tmp_path / "rgb16.png"   # (Pillow writes no 16-bit RGB PNG)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
                     + chunk(b"tRNS", struct.pack(">HHH", *clear)) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    eight = [[v >> 8 for v in p] for p in (clear, blue)]
    assert np.asarray(load_image(path))[0].tolist() == [[255, 255, 255], eight[1]]
    with Image.open(path) as img:
        assert np.asarray(load_image(img))[0].tolist() == [[255, 255, 255], eight[1]]   # a lazily opened PIL image
        # read again (the next epoch), or pickled into a loader worker once read: its tile is gone then, and the
        # guess read (1, 1, 0xff) as 8-bit ([[0, 0, 0], [255, 255, 255]])
        assert np.asarray(load_image(img))[0].tolist() == [[255, 255, 255], eight[1]]
        assert np.asarray(load_image(pickle.loads(pickle.dumps(img))))[0].tolist() == [[255, 255, 255], eight[1]]
    with Image.open(path) as img:   # pickled unread into a spawned loader worker: the loader noted its depth first
        ImageFallback("t", [Example(img, "a")], 2)
        assert np.asarray(load_image(pickle.loads(pickle.dumps(img))))[0].tolist() == [[255, 255, 255], eight[1]]
    with Image.open(path) as img:
        img.load()
        assert np.asarray(to_rgb(img, "drop"))[0].tolist() == eight   # drop keeps the stored colour
        assert img.info["transparency"] == clear   # the caller's image is left as it was


def test_the_pass_report_counts_the_rows_of_the_batches_taken(images, caplog):
    """The count at the end of a pass summed every row the workers replaced, batches made ahead that nobody
    took included (4 and 5 reported where the batches taken held 3)."""
    loader = MultiTaskLoader([_Kind()], [_split(images, NAMES)], _Backbone(), batch_size=3, steps=8,
                             num_workers=2, pin_memory=False)
    it = iter(loader)
    next(it)
    del it   # the workers had made batches ahead
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.data.fallback"):
        rest = list(loader)
    taken = sum(b["replaced"].get("cls", 0) for b in rest)
    said = [r.getMessage() for r in caplog.records if "used a substitute image" in r.getMessage()]
    assert taken > 0 and said == [f"task 'cls': {taken} row(s) used a substitute image because 2 image(s) cannot "
                                  "be used (each warned about once, with why): "
                                  + ", ".join(str(images[n]) for n in ("truncated", "corrupt"))], said


def test_a_row_an_eval_limit_takes_in_after_a_failure_is_not_scored_on_a_substitute(images, llava, tmp_path, caplog):
    """Review 216: a generative kind scores the first ``eval_limit`` rows. The pass that found a broken image was run
    again without its row, which let the next row in; when that one's image was broken too, it was scored on a
    substitute image with its own label (rows good0 + corrupt were scored, not good0 + good1)."""
    from mtl_lora_vl.tasks import build_kind

    root = images["good0"].parent.parent
    _write_rows(root, images, ["good0", "truncated", "corrupt", "good1", "good2", "good3"])
    spec_file = tmp_path / "pets.toml"
    spec_file.write_text('kind = "classification"\n[data]\nformat = "jsonl"\nverify = false\n[data.train]\n'
                         'file = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n[generative]\neval_limit = 2\n')
    spec = load_spec(spec_file)
    split = spec.load_split("val", root)
    kind = build_kind(spec, split, llava)
    scored = []
    logits = kind.logits
    kind.logits = lambda backbone, head, examples, **kw: scored.append(
        [Path(ex.image).name for ex in examples]) or logits(backbone, head, examples, **kw)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
        out = kind.evaluate(llava, None, split, batch_size=4, device="cpu")
    assert scored[-1] == ["good0.jpg", "good1.jpg"], scored
    assert "2 evaluation row(s) whose image cannot be used are left out of its scores (4 of 6 rows kept)" in caplog.text
    good = Split([ex for i, ex in enumerate(split.examples) if i not in (1, 2)], class_names=split.class_names)
    assert out == kind.evaluate(llava, None, good, batch_size=4, device="cpu") and out["n"] == 2
