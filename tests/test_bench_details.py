"""Benchmark details review 201 found: the speed bench's round order lets every case open a round (with an even
number of cases the reversal undid the rotation), the paired-difference plot colours only significant differences,
and the learning-rate table bolds the picked rate whatever its digits."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from mtl_lora_vl.benchmark.report import _code_line

REPO = Path(__file__).resolve().parents[1]


def _bench_adapters():
    spec = importlib.util.spec_from_file_location("bench_adapters_rounds", REPO / "scripts" / "bench_adapters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rounds(mod, monkeypatch, n_cases: int, repeats: int) -> list[list[str]]:
    """The round orders bench_adapters.main uses for ``n_cases`` trivial cases."""
    def trivial(measure=None, ops=None):
        return None

    names = [f"c{i}" for i in range(n_cases)]
    plan = {"checks": [], "memory_checks": [], "info": {}, "title": "t"}
    monkeypatch.setattr(mod, "clip_cases", lambda args, device, amp: ({k: trivial for k in names}, plan))
    result = mod.main(["--case", "clip", "--device", "cpu", "--repeats", str(repeats), "--warmup", "1"])
    return result["rounds"]


@pytest.mark.parametrize("n_cases", [2, 4, 6])   # CLIP with --no-peft has 6 cases
def test_interleaving_lets_every_case_open_a_round(monkeypatch, n_cases):
    """Docstring: 'each round starts one case later ... so that no case always runs first'. With an even number
    of cases the reversal of odd rounds undoes their rotation: only cases 0, 2, 4, ... ever open a round, and
    with two cases every round is [c0, c1]."""
    rounds = _rounds(_bench_adapters(), monkeypatch, n_cases, repeats=2 * n_cases)
    first = {r[0] for r in rounds}
    assert first == {f"c{i}" for i in range(n_cases)}, f"cases that open a round: {sorted(first)}"


def test_paired_forest_does_not_colour_a_zero_width_interval_as_significant(monkeypatch):
    """The report prints a difference that is the same at every seed as '(the same at every seed)', not bold
    (PairedDiff.significant is False), but the forest plot colours it red, as an interval excluding 0."""
    from mtl_lora_vl.benchmark import plots
    from mtl_lora_vl.benchmark.stats import paired_diff

    flat = paired_diff([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert not flat.significant and flat.no_spread
    results = {"configs": {"a": {"label": "a"}, "ref": {"label": "ref"}}, "reference": "ref",
               "paired_vs_reference": {"a": {"average": flat.to_dict()}}}
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    plots.paired_forest(results, Path("unused.png"))
    colours = {line.get_color() for line in figs[0].axes[0].lines}
    assert "#c0392b" not in colours, "a no-spread difference is drawn as significant"


def test_lr_table_bolds_the_picked_rate_of_any_precision():
    """Rates are keyed by f'{lr:g}' (6 significant digits, which validate() accepts as distinct), and the
    picked one is found by float(key) == lr: a rate with more digits is never bold."""
    from mtl_lora_vl.benchmark.report import render

    r = json.loads((REPO / "tests" / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    r = copy.deepcopy(r)
    lr = 0.0123456789
    r["settings"]["lr_grid"] = [0.003, lr]
    c = r["configs"]["mtl_lora-r8"]
    old = c["lr_val"]
    c["lr_val"] = {"0.003": old["0.01"], f"{lr:g}": old["0.003"]}   # the picked rate has the better val
    c["lr"] = lr
    row = next(line for line in render(r).splitlines() if line.startswith("| mtl_lora r=8 | ") and line.count("|") == 4)
    assert f"**{old['0.003']:.3f}**" in row, row


def test_report_says_one_seed_and_never_minus_zero():
    """A one-seed grid's report said '1 seeds', and a paired difference of -0.0001 printed as -0.000."""
    from mtl_lora_vl.benchmark.report import render

    r = copy.deepcopy(json.loads((REPO / "tests" / "fixtures" / "bench" / "clip_quick_results.json").read_text()))
    r["settings"]["seeds"] = 1
    cid = next(c for c, d in r["paired_vs_reference"].items() if d)
    for d in r["paired_vs_reference"][cid].values():
        d.update(mean=-0.0001, low=None, high=None)
    text = render(r)
    assert "1 seeds" not in text and "1 seed," in text and "(test split, 1 seed)" in text
    assert "-0.000" not in text and "+0.000" in text


def test_code_line_reads_short_and_long_shas_of_one_commit_as_one_version():
    """Before 34168f9 a run recorded `git rev-parse --short` (7+ digits, more in a big clone or with core.abbrev),
    now 12 digits: a grid resumed across it, or trained from two clones, named one commit as two versions."""
    runs = ([{"code": "0.1.0+gf2c8559"}] * 3 + [{"code": "0.1.0+gf2c8559a1b2c"}] * 2
            + [{"code": "0.1.0+gf2c8559a"}])
    assert _code_line(runs) == "- Code: mtl-lora-vl 0.1.0+gf2c8559a1b2c."
    # other code stays apart: another commit, the same commit with uncommitted changes, another package version
    runs += [{"code": "0.1.0+ga74141d"}, {"code": "0.1.0+gf2c8559.dirty0123abcd"}, {"code": "0.2.0+gf2c8559a1b2c"}]
    assert _code_line(runs) == ("- **Code: the runs come from 4 versions** (a grid resumed on other code): "
                                "1 run(s) with 0.1.0+ga74141d, 1 run(s) with 0.1.0+gf2c8559.dirty0123abcd, "
                                "6 run(s) with 0.1.0+gf2c8559a1b2c, 1 run(s) with 0.2.0+gf2c8559a1b2c.")
    # a short sha that two longer ones extend names neither for sure: it stays a version of its own
    two = [{"code": "0.1.0+gf2c8559"}, {"code": "0.1.0+gf2c8559aaaa"}, {"code": "0.1.0+gf2c8559bbbb"}]
    assert "3 versions" in _code_line(two)


def test_report_spec_copies_and_plots_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """report.md, the specs/ copies and the plots were written in place (results.json, settings.json and the run
    records through a temporary renamed into place): a kill mid-write left a torn file under the final name."""
    from matplotlib.figure import Figure

    from mtl_lora_vl.benchmark import plots
    from mtl_lora_vl.benchmark.report import write_report
    from mtl_lora_vl.benchmark.specs import eval_subset_specs

    r = json.loads((REPO / "tests" / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    write_report(tmp_path, r)
    copies = eval_subset_specs(["vqa"], tmp_path / "specs", {"val": 5, "test": 5})
    (tmp_path / "p.png").write_bytes(b"old image")
    before = {p: p.read_bytes() for p in (tmp_path / "report.md", Path(copies["vqa"]), tmp_path / "p.png")}
    write_text = Path.write_text

    def killed_mid_write(self, data, *a, **k):
        if data.startswith("# Method benchmark") or "[data." in data:   # the report, a spec copy
            write_text(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return write_text(self, data, *a, **k)

    def killed_mid_savefig(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_mid_write)
    monkeypatch.setattr(Figure, "savefig", killed_mid_savefig)
    r["settings"]["steps"] += 1   # another report
    for write in (lambda: write_report(tmp_path, r),
                  lambda: eval_subset_specs(["vqa"], tmp_path / "specs", {"val": 6, "test": 6}),
                  lambda: plots._save(Figure(), tmp_path / "p.png")):
        with pytest.raises(KeyboardInterrupt):
            write()
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in tmp_path.rglob("*.tmp")]
