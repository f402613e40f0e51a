"""The method benchmark's report and resume, from helper 219's audit: an ablation that diverges at every seed is a
row of its table, not a gap; a damaged run record or settings file is named with the way out; a non-finite score
is reported as NaN; every score table names its split; the findings sort the ablations too and name ties and a
single-task reference above the best; a grid on files is not resumed on other rows."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from test_bench_settings import _small_vqa, needs_builtin  # (the same tiny grid's spec)

from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark.report import _diff, _ms, render
from mtl_lora_vl.benchmark.stats import paired_diff, summarize
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.tasks import load_spec
from mtl_lora_vl.training.train import train


def _tiny(tmp_path: Path, **over) -> BenchSettings:
    base = dict(tasks=[_small_vqa(tmp_path / "specs")], methods=["mtl_lora"], match_params=False, single_task=False,
                ablations={"task_lr_mult": [1.0, 10.0]}, seeds=2, lr_grid=[3e-3], steps=1, batch_size=4, warmup=0,
                eval_batch_size=16, device="cpu")
    return BenchSettings(**{**base, **over})


@needs_builtin
def test_an_ablation_that_diverges_at_every_seed_stays_in_its_table(tmp_path):
    """Its rows vanished from the ablation table and plot, and the findings said 'its scores are over the other
    seeds' where there were none: a value that cannot train at all read as one never tried."""

    def diverging_ablation(opts: TrainOptions) -> Path:
        if opts.task_lr_mult == 10.0:
            raise FloatingPointError("5 non-finite steps in a row at step 1; lower --lr")
        return train(opts)

    results = run_benchmark(_tiny(tmp_path), tmp_path / "out", trainer=diverging_ablation, stream=io.StringIO())
    rows = results["ablations"]["task_lr_mult"]
    assert [(r["value"], r.get("diverged", False)) for r in rows] == [(1.0, False), (10.0, True)]
    report = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| task_lr_mult \| 10\.0 \(every seed diverged\) \| [\d,]+ \| diverged \| diverged \| – \|",
                     report), report
    assert "seed 1: diverged** at learning rate 0.003, the rate picked on seed 0 (5 non-finite steps in a row at " \
           "step 1; lower --lr); no seed trained, so it has no scores." in report
    assert "its scores are over the other seeds" not in report
    assert (tmp_path / "out" / "plots" / "ablations.png").is_file()


@needs_builtin
def test_a_damaged_record_or_settings_file_is_named_with_the_way_out(tmp_path):
    """A damaged result.json stopped the resumed grid with a bare 'Expecting value: line 1 column 1' (no file named)
    or a KeyError traceback; a damaged settings.json likewise. Nothing is deleted: the user chooses."""
    s = _tiny(tmp_path, ablations={}, seeds=1)
    out = tmp_path / "out"
    run_benchmark(s, out, stream=io.StringIO())
    done = out / "runs" / "mtl_lora-r8" / "lr0.003-seed0" / "result.json"
    good = done.read_text()
    for bad, why in (("", "not JSON"), (good[: len(good) // 2], "not JSON"), ("{}", "it names run None"),
                     ("[1]", "a JSON list"), (good.replace('"tasks": {', '"tasks": {"x": "y", ', 1), "no scores")):
        done.write_text(bad)
        with pytest.raises(ValueError, match=re.escape(f"{done}: the record of finished run mtl_lora-r8/lr0.003-seed0 "
                                                       f"is damaged ({why}")) as info:
            run_benchmark(s, out, trainer=None, stream=io.StringIO())
        assert f"delete the folder {done.parent} and rerun" in str(info.value)
        assert done.read_text() == bad
    done.write_text(good)
    (out / "settings.json").write_text('{"tasks": ')
    with pytest.raises(RuntimeError, match=re.escape(f"{out / 'settings.json'}: the grid's settings are damaged")):
        run_benchmark(s, out, trainer=None, stream=io.StringIO())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_score_gives_nan_spread_not_a_crash(bad):
    """statistics.stdev raised AttributeError ('float' object has no attribute 'numerator') on a NaN or infinite
    value, so one such score stopped the analysis after every run of the grid had trained."""
    s = summarize([0.5, bad, 0.7])
    assert s.n == 3 and math.isnan(s.std) and "nan" in _ms(s.to_dict())
    d = paired_diff([0.5, bad, 0.7], [0.4, 0.4, 0.4])
    assert d.n == 3 and math.isnan(d.low) and math.isnan(d.high) and not d.significant and not d.no_spread
    assert "nan" in _diff(d.to_dict()) and "**" not in _diff(d.to_dict())
    assert summarize([0.5, 0.7]).std == pytest.approx(0.1414, abs=1e-4)   # finite values as before


def test_every_score_table_of_the_report_names_its_split():
    """The paired-difference, interference and ablation tables showed test scores under headings that named no
    split (only the methods table did), beside a tuning table on the validation split."""
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_methods_results.json").read_text())
    r["interference_same_lr"] = {"mtl_lora-r8": {t: 0.0 for t in [*r["tasks"], "average"]}}
    heads = [line for line in render(r).splitlines() if line.startswith("## ") or line.startswith("The same at")]
    for start in ("## Methods", "## Paired difference", "## Interference", "The same at one", "## MTL-LoRA ablations"):
        line = next(h for h in heads if h.startswith(start))
        assert "(test split" in line, line
    assert "## Learning-rate tuning (validation split, seed 0)" in heads


def test_findings_name_the_ablations_against_the_reference_and_untested_one_seed_differences():
    """The findings sorted only the methods' differences: an ablation significantly above the default MTL-LoRA (its
    defaults losing) was left to the table; and with one seed every difference, which has no interval, was called
    'not distinguishable' as if tested."""
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_methods_results.json").read_text())
    r["paired_vs_reference"]["ablation-rank=16"]["average"].update(mean=0.05, low=0.01, high=0.09)
    r["paired_vs_reference"]["lora-r8"]["average"].update(low=None, high=None, n=1)
    lines = [x for x in render(r).split("## Methods")[0].splitlines() if x.startswith("- ")]
    abl = next(x for x in lines if x.startswith("- MTL-LoRA's ablations against mtl_lora r=8"))
    assert "significantly above: mtl_lora rank=16 (+0.050); significantly below: none; not distinguishable: " \
           "mtl_lora lambda_type=none (-0.029)," in abl
    methods = next(x for x in lines if x.startswith("- Against mtl_lora r=8"))
    assert methods.endswith("; one seed, so no interval and no test: lora r=8 (+0.012).")
    assert "not distinguishable: lora r=17 (matched) (+0.014)," in methods and "rank=16" not in methods


def test_the_best_line_names_ties_as_printed_and_a_single_task_reference_above_it():
    """'Best average test score: lora r=8, 0.514' where mtl_lora r=8 also printed 0.514 (an earlier
    docs/bench_quick, kept as tests/fixtures/bench/clip_quick_results.json), and on the built-in LLaVA the joint
    best without the each-task-alone reference that scored above it."""
    docs = Path(__file__).parent.parent / "docs"
    quick = render(json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_quick_results.json").read_text()))
    assert ("**lora r=8**, 0.514 ± 0.012 (131,072 adapter parameters); the same to three decimals: mtl_lora r=8 "
            "0.514 ± 0.001.") in quick
    llava = render(json.loads((docs / "bench_llava_methods" / "results.json").read_text()))
    assert "**task_lora r=8**, 0.536 ± 0.005 (444,672 adapter parameters); each task trained alone (the single-task " \
           "reference) scores 0.538 ± 0.006, higher." in llava


class _Killed(Exception):
    pass


def _folder_task(root: Path) -> str:
    """A file-based classification task: two classes of tiny images in train, val and test folders."""
    from PIL import Image

    for split in ("train", "val", "test"):
        for label, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), color).save(root / split / label / "a.png")
    spec = root / "colors.toml"
    spec.write_text('name = "colors"\nkind = "classification"\n[data]\nformat = "imagefolder"\n' + "".join(
        f'[data.{s}]\nfolder = "{s}"\n' for s in ("train", "val", "test")))
    return str(spec)


@needs_builtin
def test_a_grid_on_files_is_not_resumed_on_other_rows(tmp_path):
    """The grid's identity held the spec file's text but not the data it names: a killed grid on a file-based task
    whose files changed (an image added, a label fixed) resumed, mixing runs on two data sets in one comparison."""
    root = tmp_path / "data"
    s = _tiny(tmp_path, tasks=[_folder_task(root)], ablations={}, seeds=1, data_root=str(root), batch_size=2)

    def killed(opts: TrainOptions) -> Path:
        raise _Killed()

    with pytest.raises(_Killed):
        run_benchmark(s, tmp_path / "out", trainer=killed, stream=io.StringIO())
    with pytest.raises(_Killed):   # the same files: resumed
        run_benchmark(s, tmp_path / "out", trainer=killed, stream=io.StringIO())
    (root / "train" / "blue" / "a.png").rename(root / "train" / "blue" / "b.png")
    with pytest.raises(RuntimeError, match=r"other settings \(data_sha256 differ"):
        run_benchmark(s, tmp_path / "out", trainer=killed, stream=io.StringIO())
    saved = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert set(saved["data_sha256"]["colors"]) == {"train", "val", "test"}
    del saved["data_sha256"]   # a grid begun before the rows were fingerprinted is still resumed
    (tmp_path / "out" / "settings.json").write_text(json.dumps(saved))
    with pytest.raises(_Killed):
        run_benchmark(s, tmp_path / "out", trainer=killed, stream=io.StringIO())


@needs_builtin
def test_a_task_whose_test_rows_are_val_rows_is_refused(tmp_path):
    """A spec whose [data.test] read the files of [data.val] (VQAv2 has no test answers: both point at val2014) was
    benchmarked: learning rates were chosen on the very rows the report scores, with nothing said."""
    root = tmp_path / "data"
    spec = Path(_folder_task(root))
    spec.write_text(spec.read_text().replace('folder = "test"', 'folder = "val"'))
    s = _tiny(tmp_path, tasks=[str(spec)], ablations={}, seeds=1, data_root=str(root), batch_size=2)
    with pytest.raises(ValueError, match=r"colors.toml: every one of the 2 rows of its test split is also a row of its "
                                         r"val split, so the benchmark would choose learning rates on the rows it"):
        run_benchmark(s, tmp_path / "out", trainer=train, stream=io.StringIO())
    assert not (tmp_path / "out").exists()


@needs_builtin
def test_an_out_that_cannot_be_made_or_locked_names_the_flag(tmp_path, monkeypatch):
    """--out under a file (or in a folder this user cannot write) ended `bench` with a bare "[Errno 20] Not a
    directory" / "[Errno 13] Permission denied: '.../.lock'", naming neither --out nor the way out."""
    from mtl_lora_vl.benchmark import bench

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(bench.BenchDirError, match=r"--out .*notes.txt/grid: the folder cannot be made \(Not a "
                                                  r"directory: .*\); choose an --out in a folder you can write"):
        run_benchmark(_tiny(tmp_path), tmp_path / "notes.txt" / "grid", trainer=train, stream=io.StringIO())

    def denied(path: Path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bench, "take_lock", denied)
    with pytest.raises(bench.BenchDirError, match=r"--out .*: its lock file cannot be made \(Permission denied: "
                                                  r".*\.lock\); choose an --out you can write in"):
        run_benchmark(_tiny(tmp_path), tmp_path / "grid", trainer=train, stream=io.StringIO())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_held_out_rows_are_told_by_their_images(tmp_path):
    """A Hugging Face task's val and test parquet files, two classes sorted alike and no image_id column: the rows'
    keys (row number, label) matched, so different images were refused as 'every one of the 4 rows of its test
    split is also a row of its val split'. The same file read as both is still refused, and so is a copy of it."""
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from mtl_lora_vl.benchmark.bench import check_held_out
    from mtl_lora_vl.data.readers import read_split
    from mtl_lora_vl.tasks import load_spec

    rng = np.random.default_rng(0)
    feat = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    for name in ("val", "test"):
        images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
        datasets.Dataset.from_dict({"image": images, "label": [0, 0, 1, 1]}, features=feat).to_parquet(
            tmp_path / f"{name}.parquet")
    spec = load_spec("vqa")   # (only its name is read)
    splits = {s: read_split("hf_datasets", tmp_path, path=f"{s}.parquet", cache_dir=str(tmp_path / "cache"))
              for s in ("val", "test")}
    check_held_out(spec, splits)   # different files: taken
    splits["test"] = read_split("hf_datasets", tmp_path, path="val.parquet", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="every one of the 4 rows of its test split is also a row of its val"):
        check_held_out(spec, splits)
    # a copy of the val file as the test file: the same rows, images told by their bytes (by file and row they were
    # other images, so it was taken where the row keys alone refused it)
    import shutil

    shutil.copy(tmp_path / "val.parquet", tmp_path / "copy.parquet")
    splits["test"] = read_split("hf_datasets", tmp_path, path="copy.parquet", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="every one of the 4 rows of its test split is also a row of its val"):
        check_held_out(spec, splits)


def test_a_task_whose_test_rows_are_partly_val_rows_is_warned_about(tmp_path):
    """Test rows all among the val rows are refused (above); some of them were accepted with nothing said, though the
    rates are tuned on the very rows the report scores. A warning names the task and counts them by the rows'
    digest key and image file; splits sharing no row are left quiet."""
    import warnings

    from mtl_lora_vl.benchmark.bench import check_held_out
    from mtl_lora_vl.data.records import Example, Split

    spec = load_spec(_folder_task(tmp_path / "data"))

    def split(names: list[str]) -> Split:   # "val/c": val's file c.png
        return Split([Example(image=tmp_path / f"{n}.png", image_id=n.split("/")[1], label=i % 2)
                      for i, n in enumerate(names)], class_names=["red", "blue"])

    val = split(["val/a", "val/b", "val/c", "val/d"])
    test = split(["val/c", "val/d", "test/e", "test/f", "test/g"])
    with pytest.warns(UserWarning, match=r"task 'colors' \(.*colors\.toml\): 2 of the 5 rows of its test split are "
                                         r"also rows of its val split: learning rates are chosen on the val rows, so "
                                         r"the report scores those test rows with rates tuned on them"):
        check_held_out(spec, {"val": val, "test": test})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_held_out(spec, {"val": val, "test": split(["test/e", "test/f", "test/c"])})   # (another c.png)
    with pytest.raises(ValueError, match="every one of the 2 rows of its test split"):
        check_held_out(spec, {"val": val, "test": split(["val/c", "val/d"])})
