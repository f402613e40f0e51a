"""The benchmark's figures, drawn with matplotlib's object API (``Figure``; no pyplot global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..io.atomic import atomic_file
from .analysis import AVERAGE
from .stats import PairedDiff

COLORS = ["#2f6fba", "#e07b39", "#3a9a5b", "#c0392b", "#8e44ad", "#7f8c8d", "#d4ac0d", "#16a085", "#a04000",
          "#5d6d7e", "#1abc9c", "#9b59b6"]


def _save(fig: Figure, path: Path) -> Path:
    with atomic_file(path, overwrite=True, what="bench") as tmp:   # (a kill mid-write left a torn image)
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def _method_series(results: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(label, {task or average: {"mean", "std"}}) for every method configuration, then the references."""
    series = [(c["label"], c["scores"]) for c in results["configs"].values() if c["group"] == "method"]
    if results.get("single_task"):
        series.append(("single-task lora", results["single_task"]["scores"]))
    return series


def methods_bars(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: one group per task and the average, one bar per method (mean ± std over seeds)."""
    keys = [*results["tasks"], AVERAGE]
    series = _method_series(results)
    width = 0.8 / max(1, len(series))
    fig = Figure(figsize=(2.2 + 1.9 * len(keys), 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, scores) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [scores[k]["mean"] for k in keys], width, yerr=[scores[k]["std"] for k in keys], capsize=2,
               label=label, color=COLORS[i % len(COLORS)])
    zs = results.get("zero_shot") or {}
    if zs:
        zs_keys = {**zs, AVERAGE: sum(zs.values()) / len(zs)}
        for k, key in enumerate(keys):
            ax.hlines(zs_keys[key], k - 0.42, k + 0.42, colors="k", linestyles="dashed", lw=1,
                      label="zero-shot" if k == 0 else None)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("test score (headline metric)")
    ax.set_title("Methods: mean ± std over seeds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # outside: it covered the average bars
    return _save(fig, path)


def paired_forest(results: dict[str, Any], path: Path) -> Path | None:
    """Each configuration's average minus MTL-LoRA's, with its paired 95 % interval."""
    rows = [(results["configs"][cid]["label"], d[AVERAGE]) for cid, d in results["paired_vs_reference"].items() if d]
    if not rows:
        return None
    fig = Figure(figsize=(6.5, 0.9 + 0.32 * len(rows)), layout="constrained")
    ax = fig.subplots()
    for i, (_, d) in enumerate(rows):
        lo = d["low"] if d["low"] is not None else d["mean"]
        hi = d["high"] if d["high"] is not None else d["mean"]
        ax.errorbar(d["mean"], i, xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", capsize=3,
                    color="#c0392b" if PairedDiff(**d).significant else "#2f6fba")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ref = results["configs"][results["reference"]]["label"]
    ax.set_xlabel(f"average test score minus {ref}\n(paired over seeds, 95 % t-interval)")
    return _save(fig, path)


def ablation_panels(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per ablated option: the average (and each task) against the option's value."""
    abl = results.get("ablations") or {}
    if not abl:
        return None
    fig = Figure(figsize=(3.2 * len(abl), 3.3), layout="constrained")
    axes = fig.subplots(1, len(abl), squeeze=False)[0]
    for ax, (axis, rows) in zip(axes, abl.items()):
        rows = [r for r in rows if not r.get("diverged")]   # no scores (the report's table names it)
        xs = list(range(len(rows)))
        for j, task in enumerate(results["tasks"]):
            ax.plot(xs, [results["configs"][r["config"]]["scores"][task]["mean"] for r in rows], "o-", lw=0.8,
                    ms=3, alpha=0.6, color=COLORS[(j + 1) % len(COLORS)], label=task)
        ax.errorbar(xs, [results["configs"][r["config"]]["scores"][AVERAGE]["mean"] for r in rows],
                    yerr=[results["configs"][r["config"]]["scores"][AVERAGE]["std"] for r in rows], fmt="s-",
                    color="k", capsize=3, label=AVERAGE)
        ax.set_xticks(xs, [f"{r['value']}\n(default)" if r.get("default") else str(r["value"]) for r in rows])
        ax.set_xlabel(axis)
        ax.set_title(f"MTL-LoRA: {axis}", fontsize=9)
    axes[0].set_ylabel("test score")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def mixing_heatmaps(mixing: dict[str, Any] | None, path: Path) -> Path | None:
    """softmax(w_t / τ) per tower (columns) for each seed's adapter (rows): how tasks share the B_i."""
    if not mixing or not mixing.get("seeds"):
        return None
    seeds = sorted(mixing["seeds"], key=int)
    towers = sorted({t for s in seeds for t in mixing["seeds"][s]["towers"]})
    tasks = mixing["seeds"][seeds[0]]["tasks"]
    fig = Figure(figsize=(3.6 * len(towers) + 0.8, (0.4 * len(tasks) + 1.0) * len(seeds) + 0.4), layout="constrained")
    axes = fig.subplots(len(seeds), len(towers), squeeze=False)
    im = None
    for row, seed in zip(axes, seeds):
        for ax, tower in zip(row, towers):
            m = mixing["seeds"][seed]["towers"].get(tower)
            if m is None:
                ax.set_axis_off()
                continue
            im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{tower} tower, seed {seed}", fontsize=8)
            ax.set_xticks(range(len(m[0])), [f"B{i + 1}" for i in range(len(m[0]))], fontsize=7)
            ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
            for i, r in enumerate(m):
                for j, v in enumerate(r):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    fig.suptitle(f"{mixing['label']}: softmax(w_t / τ), mean over each tower's projections", fontsize=9)
    return _save(fig, path)


def lr_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Validation average against the learning rate for every tuned configuration (first seed)."""
    tuned = [c for c in results["configs"].values() if len(c["lr_val"]) > 1]
    if not tuned:
        return None
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(tuned):
        pts = sorted((float(lr), v) for lr, v in c["lr_val"].items() if v is not None)  # None: diverged
        ax.plot(*zip(*pts), "o-", label=c["label"], color=COLORS[i % len(COLORS)], lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("adapter learning rate")
    ax.set_ylabel("validation score (mean over the configuration's tasks)")
    ax.set_title("Learning-rate tuning (first seed)")
    ax.legend(fontsize=6, ncols=2)
    return _save(fig, path)


def params_vs_score(results: dict[str, Any], path: Path) -> Path | None:
    """Average test score against adapter parameters for the joint configurations."""
    rows = [c for c in results["configs"].values() if c["group"] in ("method", "ablation") and c["params"]]
    if not rows:
        return None
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for c in rows:
        s = c["scores"][AVERAGE]
        color = "#2f6fba" if c["group"] == "method" else "#9aa5b1"
        ax.errorbar(c["params"], s["mean"], yerr=s["std"], fmt="o", color=color, capsize=2)
        ax.annotate(c["label"], (c["params"], s["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("adapter parameters")
    ax.set_ylabel("average test score")
    ax.set_title("Score against adapter parameters (blue: methods, grey: MTL-LoRA ablations)")
    return _save(fig, path)


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Every figure that applies, into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    made = [methods_bars(results, out / "methods.png"),
            paired_forest(results, out / "paired_vs_mtl_lora.png") if results.get("reference") else None,
            ablation_panels(results, out / "ablations.png"), mixing_heatmaps(results.get("task_mixing"),
                                                                             out / "task_mixing.png"),
            lr_curves(results, out / "lr_tuning.png"), params_vs_score(results, out / "params_vs_score.png")]
    return [p for p in made if p is not None]
