"""What the benchmark's intervals hold, from review 321: every run scores the same test rows, so a paired t-interval
over three seeds holds the seeds' spread on those rows, not the rows' own sampling error, and a grid draws dozens of
them uncorrected; the report said neither. The committed reports are what the report code makes of their results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_lora_vl.benchmark.report import render

DOCS = Path(__file__).resolve().parents[1] / "docs"
GRIDS = ["bench_methods", "bench_llava_methods", "bench_quick", "bench_llava_quick"]


def _results(grid: str) -> dict:
    return json.loads((DOCS / grid / "results.json").read_text())


def test_the_report_says_what_its_intervals_hold_and_how_many_it_draws():
    """The CLIP grid: 18 differences to MTL-LoRA (8 methods, 10 ablations) and 9 interference averages."""
    r = _results("bench_methods")
    intro = render(r).split("## Findings")[0]
    assert "an interval holds the spread over seeds on those rows, not the rows' own sampling error" in intro
    assert (len(r["paired_vs_reference"]), len(r["interference"])) == (18, 9)
    assert "the report's 27 intervals on averages are not corrected for their number" in intro


def test_one_interval_says_nothing_of_a_count():
    """A grid with a single interval on averages has nothing to correct for."""
    r = _results("bench_quick")
    keep = next(iter(r["paired_vs_reference"]))
    r["paired_vs_reference"] = {keep: r["paired_vs_reference"][keep]}
    r["interference"] = {}
    intro = render(r).split("## Findings")[0]
    assert "not the rows' own sampling error." in intro and "not corrected" not in intro


@pytest.mark.parametrize("grid", GRIDS)
def test_committed_reports_are_rendered_from_their_results(grid):
    """docs/bench_*/report.md is what render() makes of the results.json beside it (a change to the report's text
    regenerates them: `render(json.load(results.json))`, no grid re-run)."""
    assert (DOCS / grid / "report.md").read_text() == render(_results(grid))


def test_results_md_says_what_the_intervals_hold_with_the_committed_grids_counts():
    """docs/results.md gave every interval as a plain '95 % interval': its counts of intervals drawn and the
    three seeds' differences it cites are the committed results' own."""
    text = " ".join((DOCS / "results.md").read_text().split())
    clip, llava = _results("bench_methods"), _results("bench_llava_methods")
    n = {g: (len(r["paired_vs_reference"]), len(r["interference"])) for g, r in (("clip", clip), ("llava", llava))}
    assert (f"not the test rows' own sampling error, and it is not corrected for the number drawn — {sum(n['clip'])} "
            f"on averages in this grid ({n['clip'][0]} against `mtl_lora`, {n['clip'][1]} against each task alone) "
            f"and {sum(n['llava'])} in the LLaVA one") in text
    seeds = llava["configs"]["mtl_lora-r8"]["per_seed"]
    alone = llava["single_task"]["per_seed"]
    diffs = ", ".join(f"{seeds[s]['average'] - alone[s]['average']:+.3f}".replace("-", "−") for s in sorted(seeds))
    first, second, third = diffs.split(", ")
    assert f"its three seeds agree, {first}, {second} and {third}, on the same test rows" in text
