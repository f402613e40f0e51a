"""A grid is resumed with settings that cannot change its results (helper 428): --lr-grid's rates in another order,
--methods in another order, a --data-root an older start stored on tasks that read no files; a real change is still
refused naming the setting, and a --data-root no task reads is refused before anything is written."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from test_bench_settings import _colors_task, _small_vqa, _Stop

import mtl_lora_vl.benchmark.bench as bench_module
from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark.bench import BenchDirError


def _stopper(seen: list[float]):
    def stop(opts) -> Path:   # the first run: the grid's folder and settings are checked by then
        seen.append(opts.lr)
        raise _Stop()
    return stop


def _settings(tmp_path: Path, **over) -> BenchSettings:
    base = dict(tasks=[_small_vqa(tmp_path / "specs")], methods=["lora", "mtl_lora"], match_params=False,
                ablations={}, seeds=1, lr_grid=[1e-3, 3e-4], steps=1, device="cpu")
    return BenchSettings(**{**base, **over})


def test_rates_and_methods_in_another_order_resume_the_grid(tmp_path):
    """`--lr-grid 1e-3,3e-4` then `--lr-grid 3e-4,1e-3` (the same rates; the pick is the best val score, the smaller
    rate on a tie, whatever the order) was refused as 'a grid with other settings (lr_grid differ)'. Resumed, the grid
    keeps its first order: its zero-shot run, at the first rate, is found where it was."""
    out, seen = tmp_path / "out", []
    with pytest.raises(_Stop):
        run_benchmark(_settings(tmp_path), out, trainer=_stopper(seen), stream=io.StringIO())
    stored = (out / "settings.json").read_text()
    with pytest.raises(_Stop):
        run_benchmark(_settings(tmp_path, lr_grid=[3e-4, 1e-3], methods=["mtl_lora", "lora"]), out,
                      trainer=_stopper(seen), stream=io.StringIO())
    assert seen == [1e-3, 1e-3]   # the zero-shot run's folder names the grid's first rate
    assert (out / "settings.json").read_text() == stored
    for over, says in (({"lr_grid": [1e-3, 1e-2]}, "lr_grid"), ({"lr_grid": [1e-3]}, "lr_grid"),
                       ({"methods": ["lora"]}, "methods")):
        with pytest.raises(BenchDirError, match=rf"holds a grid with other settings \({says} differ\)"):
            run_benchmark(_settings(tmp_path, **over), out, trainer=_stopper(seen), stream=io.StringIO())


def test_a_data_root_no_task_reads_is_refused_up_front_and_ignored_on_resume(tmp_path):
    """`bench --tasks vqa --data-root D` wrote settings.json, then its zero-shot run failed in the trainer ('no task of
    --tasks reads files'); rerun without --data-root, the grid was refused as 'other settings (data_root differ)'.
    Now it is refused before anything is written, and a settings.json holding such a --data-root resumes without it."""
    data = tmp_path / "data"
    data.mkdir()
    out, seen = tmp_path / "out", []
    with pytest.raises(ValueError, match=rf"--data-root {re.escape(str(data))}: no task of --tasks reads files"):
        run_benchmark(_settings(tmp_path, data_root=str(data)), out, trainer=_stopper(seen), stream=io.StringIO())
    assert not out.exists() and not seen
    with pytest.raises(_Stop):
        run_benchmark(_settings(tmp_path), out, trainer=_stopper(seen), stream=io.StringIO())
    stored = json.loads((out / "settings.json").read_text())
    assert stored["data_root"] is None
    (out / "settings.json").write_text(json.dumps({**stored, "data_root": str(data)}))   # as an older start stored it
    with pytest.raises(_Stop):
        run_benchmark(_settings(tmp_path), out, trainer=_stopper(seen), stream=io.StringIO())
    assert seen == [1e-3, 1e-3]


def test_test_rows_among_the_val_rows_are_warned_of_once_per_grid(tmp_path, recwarn, monkeypatch):
    """The warning that some test rows are val rows came again on every start and resume of the grid. Now a grid's
    start says it (and an --overwrite's, a new grid), a resume does not; settings.json and the report record it.
    (Which rows are shared: test_bench_audit; here one of the test rows is said to be.)"""
    from mtl_lora_vl.benchmark.report import render

    monkeypatch.setattr(bench_module, "check_held_out", lambda spec, splits, warn=True: 1)
    settings = _settings(tmp_path, tasks=[_colors_task(tmp_path / "data")], methods=["mtl_lora"], batch_size=2,
                         data_root=str(tmp_path / "data"))
    out, seen = tmp_path / "out", []

    def said() -> list[str]:
        texts = [str(w.message) for w in recwarn if "of its val split" in str(w.message)]
        recwarn.clear()
        return texts

    for overwrite, times in ((False, 1), (False, 0), (False, 0), (True, 1), (False, 0)):
        with pytest.raises(_Stop):
            run_benchmark(settings, out, trainer=_stopper(seen), stream=io.StringIO(), overwrite=overwrite)
        assert len(texts := said()) == times, texts
        if times:
            assert "task 'colors' (" in texts[0] and "1 of the 2 rows of its test split is also a row" in texts[0]
    assert json.loads((out / "settings.json").read_text())["test_in_val"] == {"colors": [1, 2]}
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    assert "not wholly held out" not in render(r)
    r["test_in_val"] = {r["tasks"][0]: [1, 3]}
    assert f"**Test rows not wholly held out**: {r['tasks'][0]}: 1 of its 3 test rows is also a val row" in render(r)
