"""The benchmark's report: ``report.md`` (tables and findings) and ``results.json`` (every number)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from .analysis import AVERAGE
from .runner import write_json_atomic, write_text_atomic
from .stats import PairedDiff


def _ms(s: dict[str, float] | None) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def _signed(x: float) -> str:
    """``x`` to 3 places with its sign; a difference that rounds to zero reads +0.000, not -0.000."""
    text = f"{x:+.3f}"
    return "+0.000" if text == "-0.000" else text


def seeds_text(n: int) -> str:
    """"1 seed", "3 seeds"."""
    return f"{n} seed" + ("" if n == 1 else "s")


def _diff(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    if d["low"] is None:
        return _signed(d['mean'])
    if PairedDiff(**d).no_spread:
        return f"{_signed(d['mean'])} (the same at every seed)"
    sig = "**" if PairedDiff(**d).significant else ""
    return f"{sig}{_signed(d['mean'])} [{_signed(d['low'])}, {_signed(d['high'])}]{sig}"


def _diverged_note(c: dict[str, Any]) -> str:
    """`` (seed k diverged)`` / `` (seed k failed)`` when a seed of the configuration diverged or its run failed (its
    scores are over the other seeds)."""
    notes = [f"seed {', '.join(map(str, bad))} {what}" for what in ("diverged", "failed")
             if (bad := c.get(f"{what}_seeds"))]
    return f" ({'; '.join(notes)})" if notes else ""


def _singles_note(singles: list[dict[str, Any]]) -> str:
    """`` (seed k failed: retrieval)`` for the single-task reference row: a seed that diverged or failed in any task's
    run is left out of the whole reference (its average needs every task), as a configuration's row says."""
    notes = []
    for what in ("diverged", "failed"):
        by_seed: dict[int, list[str]] = {}
        for c in singles:
            for seed in c.get(f"{what}_seeds") or []:
                by_seed.setdefault(seed, []).append(c["tasks"][0])
        notes += [f"seed {seed} {what}: {', '.join(tasks)}" for seed, tasks in sorted(by_seed.items())]
    return f" ({'; '.join(notes)})" if notes else ""


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [_row(header), _row(align), *(_row(r) for r in rows), ""]


def _interval_scope(r: dict[str, Any]) -> str:
    """What the intervals hold and what they do not: every run scores the same test rows, so an interval is the seeds'
    spread on those rows, not the rows' own sampling error; and the report draws many intervals, uncorrected."""
    diffs = [*(r.get("paired_vs_reference") or {}).values(), *(r.get("interference") or {}).values()]
    n = sum(1 for d in diffs if d and d[AVERAGE]["low"] is not None)
    many = (f"; the report's {n} intervals on averages are not corrected for their number (at 95 %, about one in "
            "twenty differences with no effect behind it comes out bold)") if n > 1 else ""
    return ("Every run scores the same test rows: an interval holds the spread over seeds on those rows, not the rows' "
            f"own sampling error{many}.")


def _findings(r: dict[str, Any]) -> list[str]:
    cfgs = r["configs"]
    joint = {cid: c for cid, c in cfgs.items() if c["group"] in ("method", "ablation")}
    lines = []
    complete = {cid: c for cid, c in joint.items() if not c.get("failed_seeds")}
    if complete:   # means over other seeds are no comparison: a configuration with a failed seed is left out
        lines.append(_best_line(r, complete))
    if r["reference"]:
        lines += [line for group in ("method", "ablation") if (line := _against_reference(r, group))]
    for d in r.get("diverged", []):
        rest = ("no seed trained, so it has no scores" if d.get("every_seed") else "its scores are over the other "
                "seeds, and paired differences use the seeds both sides have")
        lines.append(f"- **{d['label']}, seed {d['seed']}: diverged** at learning rate {d['lr']:g}, the rate picked on "
                     f"seed 0 ({d['diverged']}); {rest}.")
    for f in r.get("failed", []):
        lines.append(f"- **{f['label']}, seed {f['seed']}, learning rate {f['lr']:g}: the run failed** "
                     f"(`{f['failed']}`; log `{f['log']}`): {f['effect']}. Rerun with `--retry-failed` to run it "
                     "again.")
    if r["interference"]:
        parts = [f"{cfgs[cid]['label']} {_diff(d[AVERAGE])}" for cid, d in r["interference"].items() if d]
        lines.append("- Interference (joint score minus each task trained alone with `lora`, averaged over tasks; "
                     "negative = joint training costs accuracy): " + "; ".join(parts) + ".")
    return lines


def _best_line(r: dict[str, Any], joint: dict[str, dict[str, Any]]) -> str:
    """The best joint average, with the configurations equal to it as printed (three decimals: one was named best
    by a difference the report does not show) and the single-task reference when it is as high or higher."""
    best = max(joint.values(), key=lambda c: c["scores"][AVERAGE]["mean"])
    shown = round(best["scores"][AVERAGE]["mean"], 3)
    line = (f"- Best average test score of a jointly trained configuration: **{best['label']}**, "
            f"{_ms(best['scores'][AVERAGE])} ({best['params']:,} adapter parameters)")
    tied = [c for c in joint.values() if c is not best and round(c["scores"][AVERAGE]["mean"], 3) == shown]
    if tied:
        line += "; the same to three decimals: " + ", ".join(f"{c['label']} {_ms(c['scores'][AVERAGE])}" for c in tied)
    single_task = r.get("single_task") or {}
    single = single_task.get("scores", {}).get(AVERAGE)
    if single and round(single["mean"], 3) >= shown:
        line += f"; each task trained alone (the single-task reference) scores {_ms(single)}"
        seeds, best_seeds = sorted(single_task["per_seed"], key=int), sorted(best["per_seed"], key=int)
        if seeds != best_seeds:   # means over other seeds: no comparison
            line += (f" over {_seeds(seeds)} and {best['label']} over {_seeds(best_seeds)} (a run failed or "
                     "diverged): means over other seeds, not compared")
        else:
            line += ", as high" if round(single["mean"], 3) == shown else ", higher"
    return line + "."


def _seeds(seeds: list[str]) -> str:
    """``seed 0`` / ``seeds 0, 2``."""
    return f"seed{'' if len(seeds) == 1 else 's'} {', '.join(seeds)}"


def _against_reference(r: dict[str, Any], group: str) -> str | None:
    """The findings' line on the ``group`` configurations' paired differences to the reference (None: none). A
    difference without an interval (one seed) is said to be untested: it was 'not distinguishable'."""
    cfgs = r["configs"]
    above, below, same, untested = [], [], [], []
    for cid, d in r["paired_vs_reference"].items():
        if cfgs[cid]["group"] != group or not d:
            continue
        a = d[AVERAGE]
        text = f"{cfgs[cid]['label']} ({_signed(a['mean'])})"
        if a["low"] is None:
            untested.append(text)
        elif PairedDiff(**a).significant:
            (above if a["low"] > 0 else below).append(text)
        else:
            same.append(text)
    if not (above or below or same or untested):
        return None
    ref = cfgs[r["reference"]]["label"]
    line = (f"- MTL-LoRA's ablations against {ref}" if group == "ablation" else f"- Against {ref}")
    line += (" (average over tasks, paired 95 % interval over seeds): "
             f"significantly above: {', '.join(above) or 'none'}; significantly below: {', '.join(below) or 'none'}; "
             f"not distinguishable: {', '.join(same) or 'none'}")
    return line + (f"; one seed, so no interval and no test: {', '.join(untested)}." if untested else ".")


def _held_out_note(r: dict[str, Any]) -> list[str]:
    """The tasks some of whose test rows are val rows (``test_in_val``: ``[shared, rows]``), said where the grid's start
    warned of them: their test scores are partly on rows the learning rates were tuned on."""
    overlap = r.get("test_in_val") or {}
    if not overlap:
        return []
    each = "; ".join(f"{t}: {n:,} of its {rows:,} test rows {'is also a val row' if n == 1 else 'are also val rows'}"
                     for t, (n, rows) in overlap.items())
    return [f"**Test rows not wholly held out**: {each}. Learning rates are chosen on the val split, so those tasks' "
            "test scores are partly on rows the rates were tuned on.", ""]


def render(r: dict[str, Any]) -> str:
    """report.md as a string."""
    s, tasks, cfgs = r["settings"], r["tasks"], r["configs"]
    lines = [f"# Method benchmark: {', '.join(tasks)} on `{s['backbone']}`", ""]
    lines += [f"{r['runs_total']} training runs, {seeds_text(s['seeds'])}, {s['steps']} steps at batch "
              f"{s['batch_size']} "
              f"each ({s['steps'] * s['batch_size']:,} training samples), same trainer, data order and budget for "
              f"every method. Test scores (headline metric per task, higher is better) are mean ± sample std over "
              f"seeds; differences are paired over seeds with a 95 % t-interval; **bold** = the interval "
              f"excludes 0. {_interval_scope(r)}", ""]
    lines += _held_out_note(r)
    lines += ["## Findings", "", *_findings(r), ""]

    ref = r["reference"]
    head = ["configuration", "r", "adapter params", "lr", *tasks, AVERAGE,
            f"Δ avg vs {cfgs[ref]['label']}" if ref else "Δ avg", "step (s)"]
    rows = []
    if r["zero_shot"]:
        zs = r["zero_shot"]
        rows.append(["zero-shot", "–", "–", "–", *(f"{zs[t]:.3f}" for t in tasks),
                     f"{sum(zs.values()) / len(zs):.3f}", "–", "–"])
    for cid, c in cfgs.items():
        if c["group"] != "method":
            continue
        d = r["paired_vs_reference"].get(cid)
        rows.append([c["label"] + _diverged_note(c), c["options"]["rank"], f"{c['params']:,}", f"{c['lr']:g}",
                     *(_ms(c["scores"][t]) for t in tasks), _ms(c["scores"][AVERAGE]),
                     "(reference)" if cid == ref else _diff(d[AVERAGE] if d else None),
                     f"{c['step_s']:.3f}" if c["step_s"] else "–"])
    if r["single_task"]:
        st = r["single_task"]["scores"]
        singles = [c for c in cfgs.values() if c["group"] == "single"]
        lrs = ", ".join(f"{c['tasks'][0]} {c['lr']:g}" for c in singles)
        batches = ", ".join(f"{c['tasks'][0]} {c['batch_size']}" for c in singles)
        params = ", ".join(f"{c['params']:,}" for c in singles[:1])
        rows.append(["single-task lora (each task alone)" + _singles_note(singles), singles[0]["options"]["rank"],
                     f"{params} per task",
                     lrs, *(_ms(st[t]) for t in tasks), _ms(st[AVERAGE]), "–",
                     _mean_step(singles)])
    lines += [f"## Methods (test split, {seeds_text(s['seeds'])})", "", *_table(head, rows)]
    if r["single_task"]:
        lines += [f"The single-task reference trains `lora` on one task alone for the same {s['steps']} steps at "
                  f"batch {batches} -- its task's share of the rows of a joint batch of {s['batch_size']}, rounded -- "
                  "so it sees as many examples of its task as a joint run; joint minus single-task then measures what "
                  "sharing the adapter costs, not the extra data a full batch of one task would give.", ""]

    if r["paired_vs_reference"]:
        rows = [[cfgs[cid]["label"], *(_diff(d[k]) for k in [*tasks, AVERAGE])]
                for cid, d in r["paired_vs_reference"].items() if d and cfgs[cid]["group"] == "method"]
        lines += [f"## Paired difference to {cfgs[ref]['label']} per task (test split)", "",
                  *_table(["configuration", *tasks, AVERAGE], rows)]
    if r["interference"]:
        rows = [[cfgs[cid]["label"], *(_diff(d[k]) for k in [*tasks, AVERAGE])]
                for cid, d in r["interference"].items() if d]
        lines += ["## Interference: joint training minus the single-task reference (test split)", "",
                  "Each joint method's test score minus `lora` (default rank) trained on that task alone with the "
                  "same budget and seed; negative means the tasks hurt each other. The single-task runs tune their "
                  "learning rate per task, a joint method one rate for all its tasks, so these differences also "
                  "hold the cost of sharing a rate, not only an adapter.", "",
                  *_table(["configuration", *tasks, AVERAGE], rows)]
        same = r.get("interference_same_lr") or {}
        if same:
            rows = [[cfgs[cid]["label"], f"{cfgs[cid]['lr']:g}", *(_signed(d[k]) for k in [*tasks, AVERAGE])]
                    for cid, d in same.items()]
            lines += ["The same at one learning rate (test split): seed 0, each task alone at the joint method's rate "
                      "(from the single-task tuning runs; one seed, no interval):", "",
                      *_table(["configuration", "lr", *tasks, AVERAGE], rows)]
    if r["ablations"]:
        rows = []
        for axis, entries in r["ablations"].items():
            for e in entries:
                if e.get("diverged"):   # every seed diverged: a result, not a missing row
                    rows.append([axis, f"{e['value']} (every seed diverged)", f"{e['params']:,}",
                                 *("diverged" for _ in tasks), "diverged", "–"])
                    continue
                c = cfgs[e["config"]]
                d = r["paired_vs_reference"].get(e["config"])
                rows.append([axis, f"{e['value']}{_diverged_note(c)}", f"{c['params']:,}",
                             *(_ms(c["scores"][t]) for t in tasks),
                             _ms(c["scores"][AVERAGE]), "(reference)" if e["config"] == ref else
                             _diff(d[AVERAGE] if d else None)])
        lines += [f"## MTL-LoRA ablations (test split, at {cfgs[ref]['label']}'s learning rate {cfgs[ref]['lr']:g})"
                  if ref else "## MTL-LoRA ablations (test split)", "",
                  *_table(["option", "value", "adapter params", *tasks, AVERAGE, "Δ avg vs reference"], rows, 2)]

    lr_grid = [f"{lr:g}" for lr in s["lr_grid"]]
    def val(c: dict[str, Any], lr: str) -> str:
        v = c["lr_val"][lr]
        if lr in c.get("lr_failed", []):
            return "failed"
        return "diverged" if v is None else f"**{v:.3f}**" if lr == f"{c['lr']:g}" else f"{v:.3f}"

    rows = [[c["label"], *(val(c, lr) for lr in lr_grid if lr in c["lr_val"])]
            for c in cfgs.values() if len(c["lr_val"]) == len(lr_grid)]
    if rows:
        lines += ["## Learning-rate tuning (validation split, seed 0)", "",
                  f"Adapter learning rate picked per configuration from {{{', '.join(lr_grid)}}} by the validation "
                  f"average at seed 0 (**bold** = picked); the other seeds ran at the picked rate (tuned on seed 0 "
                  f"only). Head learning rate {r['head_lr']:g} for all.", "",
                  *_table(["configuration", *lr_grid], rows)]

    ranks = r.get("ranks") or {}
    if ranks:
        rows = [[m, v["default"], f"{v['default_params']:,}", v.get("matched", "–"),
                 f"{v['matched_params']:,}" if v.get("matched_params") else "–"] for m, v in ranks.items()]
        target = (f"{cfgs[ref]['label']}'s ({cfgs[ref]['params']:,})" if ref else   # MTL-LoRA is not in the grid
                  f"MTL-LoRA's at its default rank (r = {next(iter(ranks.values()))['default']}; not run here)")
        lines += ["## Ranks and parameter budgets", "",
                  f"Matched ranks give each method the adapter parameter count closest to {target}, counted by "
                  "attaching it to the backbone (`mlv.trainable_parameters`; task heads excluded, the same for all).",
                  "",
                  *_table(["method", "default r", "params", "matched r", "params"], rows)]

    ev = r["eval"]
    lines += ["## Budget and protocol", "",
              f"- Backbone `{s['backbone']}`; tasks {', '.join(tasks)}; {s['steps']} steps, batch {s['batch_size']}, "
              f"{min(s['warmup'], s['steps'])} warm-up steps then cosine decay; precision {s['precision']}, "
              f"device {s['device']}, "
              f"{_threads_text(r)}.",
              f"- Test examples per task: {', '.join(f'{t} {n:,}' for t, n in ev['test'].items())}; validation: "
              f"{_val_text(ev['val_scenes'])} (the same for every run); the zero-shot score is computed once.",
              f"- Seeds {', '.join(str(x) for x in range(s['seeds']))}; a seed fixes the data order and the "
              "adapter initialisation, so the paired differences compare methods on identical batches.",
              f"- Measured: {r['mean_run_s']:.0f} s wall and {r['mean_run_cpu_s']:.0f} s CPU per run on average "
              f"(setup, training, evaluation; wall > CPU when other jobs share the cores); {r['wall_s'] / 60:.1f} min "
              "for the runs executed in the last session. Step time in the methods table: seconds per optimizer "
              "step from the trainer's throughput." if r.get("mean_run_s") else "",
              "- Each run's folder is `runs/<configuration>/lr<lr>-seed<seed>/` (trainer output in `train/`, "
              "log in `train.log`, `result.json` = done, `failed.json` = failed).", _code_line(r.get("runs", [])), ""]
    lines += _mixing_lines(r.get("task_mixing"))
    lines += ["## Plots", "", *(f"![{p}](plots/{p})" for p in r["plots"]), ""]
    return "\n".join(lines)


def _code_line(runs: list[dict[str, Any]]) -> str:
    """Which code trained the runs (a resumed grid may mix versions: then the report says so)."""
    counts = _one_commit_once(Counter(r.get("code", "not recorded") for r in runs))
    if len(counts) == 1:
        return f"- Code: mtl-lora-vl {next(iter(counts))}."
    return ("- **Code: the runs come from " + str(len(counts)) + " versions** (a grid resumed on other code): "
            + ", ".join(f"{n} run(s) with {v}" for v, n in sorted(counts.items())) + ".")


#: ``<version>+g<sha>[.dirty<hash>]`` as :func:`~.runner.code_version` writes it (7+ hex digits: git's shortest).
_CODE = re.compile(r"(?P<version>.+)\+g(?P<sha>[0-9a-f]{7,40})(?P<dirty>\.dirty[0-9a-f]+)?")


def _one_commit_once(counts: Counter[str]) -> Counter[str]:
    """``counts`` with a version whose sha is a prefix of a longer one's (same package version and changes) counted
    under the longer one: runs before 34168f9 recorded ``git rev-parse --short`` (7 digits or more, by clone), later
    ones 12 digits, so one commit read as two versions. A prefix of two different shas stays on its own."""
    parsed = {v: m for v in counts if (m := _CODE.fullmatch(v))}
    out: Counter[str] = Counter()
    for v, n in counts.items():
        m = parsed.get(v)
        longer = sorted((w for w, o in parsed.items() if m and o["sha"] != m["sha"] and o["sha"].startswith(m["sha"])
                         and (o["version"], o["dirty"]) == (m["version"], m["dirty"])), key=len)
        one = longer and all(parsed[longer[-1]]["sha"].startswith(parsed[w]["sha"]) for w in longer)
        out[longer[-1] if one else v] += n
    return out


def _threads_text(r: dict[str, Any]) -> str:
    """The torch thread count the runs trained with (a grid resumed with another ``--threads`` says so: float sums,
    and so the last bits of the scores, differ across thread counts)."""
    counts = Counter(run["threads"] for run in r["runs"] if "threads" in run)
    if len(counts) <= 1:
        return f"{next(iter(counts), r['threads'])} thread(s)"
    return ("**runs trained with " + ", ".join(f"{n} run(s) on {t} thread(s)" for t, n in sorted(counts.items()))
            + "** (a grid resumed with another --threads)")


def _mixing_lines(mixing: dict[str, Any] | None) -> list[str]:
    """How the reference's tasks mix the B_i per projection (the heatmap shows the mean over projections)."""
    rows = [[seed, tower, f"{v['weight_min']:.3f}–{v['weight_max']:.3f}", f"{v['tv_median']:.3f}",
             f"{v['tv_max']:.3f}", v["projections"]]
            for seed, m in sorted((mixing or {}).get("seeds", {}).items(), key=lambda kv: int(kv[0]))
            for tower, v in m.get("spread", {}).items()]
    if not rows:
        return []
    return ["## Task mixing per projection", "",
            f"softmax(w_t / τ) of {mixing['label']}, projection by projection: the range of its weights, and the "
            "total-variation distance between two tasks' mixtures (mean over task pairs; median and largest over "
            "projections; 0 = same mixture, 1 = disjoint). The heatmap averages over a tower's projections, which "
            "pulls every weight towards 1/n.", "",
            *_table(["seed", "tower", "weights", "TV median", "TV max", "projections"], rows, 2)]


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """``results.json`` and ``report.md`` in ``out``; returns the report's path."""
    write_json_atomic(out / "results.json", results)
    path = out / "report.md"
    write_text_atomic(path, render(results))
    return path


def _val_text(scenes: dict[str, int | None] | int | None) -> str:
    """The validation size of each task (results.json before it was per task: one number for every task)."""
    if not isinstance(scenes, dict):
        return f"{scenes or 'all'} scenes per built-in task, subsets of the built-in world's splits"
    return ", ".join(f"{t} {'all' if n is None else f'{n:,} scenes'}" for t, n in scenes.items())


def _mean_step(configs: list[dict]) -> str:
    """The mean step time of the configurations that have one ("–": none): a task whose runs all failed has none,
    which counted as 0 s, pulling the single-task row's step time down."""
    steps = [c["step_s"] for c in configs if c["step_s"]]
    return f"{sum(steps) / len(steps):.3f}" if steps else "–"
