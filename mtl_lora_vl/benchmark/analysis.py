"""From run records to the benchmark's numbers: per-configuration means and stds over seeds, paired
differences to MTL-LoRA, interference against the single-task reference, ablations, LR tuning."""

from __future__ import annotations

import statistics
from typing import Any

from .grid import Config
from .stats import paired_diff, summarize

AVERAGE = "average"


def _by_seed(records: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """{seed: {task: test score, "average": mean over tasks}} of one configuration's final runs (a run that
    diverged or failed has no scores: its seed is left out, and the report says so)."""
    out = {}
    for r in records:
        if r.get("diverged") or r.get("failed"):
            continue
        scores = dict(r["tasks"])
        scores[AVERAGE] = statistics.fmean(r["tasks"].values())
        out[r["seed"]] = scores
    return out


def _paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], keys: list[str]) -> dict[str, Any]:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {}
    return {k: paired_diff([a[s][k] for s in seeds], [b[s][k] for s in seeds]).to_dict() for k in keys}


def _single_reference(singles: dict[str, dict[int, dict[str, float]]], tasks: list[str]) -> dict[int, dict[str, float]]:
    """Per seed, each task's score when trained alone, and their average (seeds where every task ran)."""
    seeds = set.intersection(*(set(singles[t]) for t in tasks)) if all(t in singles for t in tasks) else set()
    out = {}
    for s in sorted(seeds):
        row = {t: singles[t][s][t] for t in tasks}
        row[AVERAGE] = statistics.fmean(row.values())
        out[s] = row
    return out


def analyse(tasks: list[str], configs: list[Config], reference: Config | None, final: dict[str, list[dict]],
            tuning: dict[str, list[dict]], picked: dict[str, float], params: dict[str, int],
            zero_shot: dict[str, Any], ablation_values: dict[str, list[Any]]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data.

    ``final`` maps a configuration id to its runs at the picked learning rate (one per seed);
    ``tuning`` to its first-seed runs at every grid learning rate.
    """
    keys = [*tasks, AVERAGE]
    per_seed = {c.cid: _by_seed(final.get(c.cid, [])) for c in configs}
    out_configs: dict[str, Any] = {}
    for c in configs:
        seeds = per_seed[c.cid]
        if not seeds:
            continue
        ctasks = list(c.tasks)
        ck = [*ctasks, AVERAGE]
        steps = [r["step_s"] for r in final[c.cid] if r.get("step_s")]
        ran = [r for r in final[c.cid] if not r.get("failed")]
        out_configs[c.cid] = {
            "group": c.group, "label": c.label, "tasks": ctasks, "options": c.options, "axis": c.axis,
            "value": c.value, "params": params.get(c.cid), "lr": picked.get(c.cid), "batch_size": c.batch_size,
            "lr_val": {f"{r['lr']:g}": None if r.get("diverged") or r.get("failed") else
                       statistics.fmean(r["val"].values()) for r in tuning.get(c.cid, [])},   # None: no score
            "lr_failed": [f"{r['lr']:g}" for r in tuning.get(c.cid, []) if r.get("failed")],
            "scores": {k: summarize([s[k] for s in seeds.values()]).to_dict() for k in ck},
            "per_seed": {str(s): v for s, v in sorted(seeds.items())},
            "step_s": statistics.fmean(steps) if steps else None,
            "wall_s": statistics.fmean(r["wall_s"] for r in ran),
            "cpu_s": statistics.fmean(r.get("cpu_s", r["wall_s"]) for r in ran),
            "diverged_seeds": sorted(r["seed"] for r in final[c.cid] if r.get("diverged")),
            "failed_seeds": sorted(r["seed"] for r in final[c.cid] if r.get("failed")),
        }
    singles = {c.tasks[0]: per_seed[c.cid] for c in configs if c.group == "single" and per_seed[c.cid]}
    single_ref = _single_reference(singles, tasks)
    joint = [c for c in configs if c.group in ("method", "ablation") and c.cid in out_configs]
    ref_seeds = per_seed.get(reference.cid, {}) if reference else {}
    result: dict[str, Any] = {
        "diverged": [{**{k: r[k] for k in ("label", "seed", "lr", "diverged", "folder")},
                      "every_seed": c.cid not in out_configs}   # no seed trained: the configuration has no scores
                     for c in configs for r in final.get(c.cid, []) if r.get("diverged")],
        "tasks": tasks, "zero_shot": zero_shot, "configs": out_configs,
        "reference": reference.cid if reference and reference.cid in out_configs else None,
        "single_task": ({"scores": {k: summarize([s[k] for s in single_ref.values()]).to_dict() for k in keys},
                         "per_seed": {str(s): v for s, v in single_ref.items()}} if single_ref else None),
        "paired_vs_reference": {c.cid: _paired(per_seed[c.cid], ref_seeds, keys)
                                for c in joint if ref_seeds and c.cid != reference.cid},
        "interference": {c.cid: _paired(per_seed[c.cid], single_ref, keys)
                         for c in joint if single_ref and c.group == "method"},
    }
    result["failed"] = _failed(configs, final, tuning, picked, out_configs)
    result["interference_same_lr"] = _same_lr_interference(tasks, configs, final, tuning, picked)
    result["ablations"] = _ablations(configs, reference if result["reference"] else None, ablation_values,
                                     set(out_configs), {c.cid for c in configs
                                                        if any(not r.get("failed") for r in final.get(c.cid, []))},
                                     params)
    return result


def _failed(configs: list[Config], final: dict[str, list[dict]], tuning: dict[str, list[dict]],
            picked: dict[str, float], scored: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed run (its error line and log) and what its absence does to the results (``"effect"``)."""
    out: dict[str, dict[str, Any]] = {}
    for c in configs:
        for r in (*tuning.get(c.cid, []), *final.get(c.cid, [])):
            if not r.get("failed") or r["key"] in out:
                continue
            if c.cid not in picked:
                effect = "no learning rate finished, so the configuration has no scores and its other seeds did not run"
            elif r["lr"] != picked[c.cid]:
                effect = (f"the rate was left out of the tuning: {picked[c.cid]:g} was picked among the rates that "
                          "finished")
            elif c.cid not in scored:
                effect = "no seed finished, so the configuration has no scores"
            elif c.group == "single":   # (never in the best-score comparison: that compares joint training)
                n = len(scored[c.cid]["per_seed"])
                effect = (f"its scores are over the {n} seed{'' if n == 1 else 's'} that finished; the single-task "
                          "reference (each task trained alone) is over the seeds where every task's run finished, "
                          "and interference pairs it with each joint method on the seeds both have")
            else:
                n = len(scored[c.cid]["per_seed"])
                effect = (f"its scores are over the {n} seed{'' if n == 1 else 's'} that finished, and paired "
                          "differences use the seeds both sides finished; it is left out of the best-score "
                          "comparison, which needs every seed")
            out[r["key"]] = {**{k: r[k] for k in ("label", "seed", "lr", "failed", "log")}, "effect": effect}
    return list(out.values())


def _scored(record: dict[str, Any]) -> bool:
    """Whether a run record holds scores (a run that diverged or failed has none)."""
    return not record.get("diverged") and not record.get("failed")


def _same_lr_interference(tasks: list[str], configs: list[Config], final: dict[str, list[dict]],
                          tuning: dict[str, list[dict]], picked: dict[str, float]) -> dict[str, dict[str, float]]:
    """Seed 0: each joint method's test score minus each task trained alone *at the method's learning rate*
    (from the single-task tuning runs). The single-task reference tunes its rate per task and a joint method
    has one for all, so the tuned interference also holds the rate's effect; this one does not (one seed)."""
    singles = {c.tasks[0]: c.cid for c in configs if c.group == "single"}
    if not singles or set(tasks) - set(singles):
        return {}
    out = {}
    for c in configs:
        if c.group != "method" or c.cid not in picked:
            continue
        # (a run that diverged or failed has no scores: a failed one crashed the analysis after the whole grid)
        joint = next((r for r in final.get(c.cid, []) if r["seed"] == 0 and _scored(r)), None)
        alone = {t: next((r for r in tuning.get(singles[t], []) if r["lr"] == picked[c.cid] and _scored(r)), None)
                 for t in tasks}
        if joint is None or any(r is None for r in alone.values()):
            continue
        row = {t: joint["tasks"][t] - alone[t]["tasks"][t] for t in tasks}   # type: ignore[index]
        row[AVERAGE] = statistics.fmean(row.values())
        out[c.cid] = row
    return out


def _ablations(configs: list[Config], reference: Config | None, values: dict[str, list[Any]],
               available: set[str], ran: set[str], params: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """{axis: [{"value", "config", "default"}]} in the order of ``values``; the default value is the reference run.
    A value whose runs (``ran``) all diverged has no scores: its row says so (``"diverged": True``, its
    ``"params"``) instead of leaving the table, a result as plain as a score."""
    where = {(c.axis, c.value): c.cid for c in configs if c.group == "ablation"}
    out: dict[str, list[dict[str, Any]]] = {}
    for axis, vals in values.items():
        rows = []
        for v in vals:
            cid = reference.cid if reference is not None and reference.options[axis] == v else where.get((axis, v))
            if cid in available:
                rows.append({"value": v, "config": cid, "default": reference is not None and cid == reference.cid})
            elif cid in ran:
                rows.append({"value": v, "config": cid, "default": False, "diverged": True, "params": params.get(cid)})
        if rows:
            out[axis] = rows
    return out
