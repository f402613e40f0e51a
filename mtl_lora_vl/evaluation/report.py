"""The zero-shot vs adapted table and the plots of a run (training curves, scores, task mixing).

Plots are drawn with matplotlib's object API (a ``Figure`` on its own Agg canvas): no pyplot, no global
figure registry, and the user's backend (a notebook's, say) is never switched.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.attach import attach_info
from ..io.atomic import atomic_file
from ..tasks.registry import get_kind

logger = logging.getLogger(__name__)

#: What Markdown reads as markup in a name taken from data or a spec (a class, a question type, a task given in code):
#: '|' ends a table cell, '*' and '`' open emphasis and code, '_' does so at a word's edge (not inside a word of any
#: script: "vqa_accuracy", "café_noir").
_MARKUP = re.compile(r"[\\|*`<\[\]]|(?<![^\W_])_|_(?![^\W_])")


def cell(text: object) -> str:
    """``text`` as Markdown shows it literally in a table cell (``a|b`` -> ``a\\|b``, ``__bg__`` -> ``\\_\\_bg\\_\\_``):
    a '|' in a class name split its row into one cell too many, and the scores showed under the wrong columns."""
    return _MARKUP.sub(lambda m: "\\" + m.group(0), str(text)).replace("\n", " ")


def _change(adapted: float, zero_shot: float) -> str:
    """The change between two scores as the table shows them (each to 4 places), so a row adds up as printed
    (eval.json keeps the exact difference); one that rounds to zero is +0.0000 (not -0.0000)."""
    d = float(f"{adapted:.4f}") - float(f"{zero_shot:.4f}")
    return f"{(d if round(d, 4) != 0 else 0.0):+.4f}"


def has_adapted(result: dict[str, Any]) -> bool:
    """Whether ``result`` holds adapted scores; False for a base model scored zero-shot only (``eval`` without
    ``--adapter``), whose tables and plot show a zero-shot column alone."""
    return any(r.get("adapted") is not None for r in result["tasks"].values())


def title(result: dict[str, Any]) -> str:
    """What the report and the score plot show: zero-shot vs adapted, adapted alone (``--skip-zero-shot``), or
    zero-shot alone (a base model scored without an adapter)."""
    if not has_adapted(result):
        return "Zero-shot"
    skipped = all(r["zero_shot"] is None for r in result["tasks"].values())
    return "Adapted (zero-shot skipped)" if skipped else "Zero-shot vs adapted"


def not_scored(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tasks asked for that had nothing to score (``eval --split val``: no val split), by name: each one's
    ``metric``, ``kind`` and ``reason`` (and ``data_spec``: the spec file whose data lacks the split, where ``eval
    --tasks`` named one)."""
    return result.get("not_scored") or {}


def markdown_table(result: dict[str, Any]) -> str:
    """| task | metric | zero-shot | adapted | change | as Markdown (also readable printed), with a split
    column after the task when some task was scored on another split than the one asked for (a task
    without a test split is scored on val); | task | metric | zero-shot | for a result without adapted scores.
    A task asked for with nothing to score (no val split) has a row too, saying why it is not scored."""
    asked = result.get("split")
    split_col = any(r.get("split", asked) != asked for r in result["tasks"].values())
    adapted = has_adapted(result)
    head = "| task | split | metric |" if split_col else "| task | metric |"
    scores = " zero-shot | adapted | change |" if adapted else " zero-shot |"
    rule = "|---|---|" + ("---|" if split_col else "") + ("---:|---:|---:|" if adapted else "---:|")
    rows = [head + scores, rule]
    for name, r in result["tasks"].items():
        split = f" {cell(r.get('split', asked))} |" if split_col else ""
        name, metric = cell(name), cell(r["metric"])
        if not adapted:
            rows.append(f"| {name} |{split} {metric} | {r['zero_shot']:.4f} |")
            continue
        zs, change = (("–", "–") if r["zero_shot"] is None
                      else (f"{r['zero_shot']:.4f}", _change(r["adapted"], r["zero_shot"])))
        rows.append(f"| {name} |{split} {metric} | {zs} | {r['adapted']:.4f} | {change} |")
    for name, r in not_scored(result).items():
        split = " – |" if split_col else ""
        rows.append(f"| {cell(name)} |{split} {cell(r['metric'])} | not scored: {cell(r['reason'])} |"
                    + (" – | – |" if adapted else ""))
    return "\n".join(rows)


def _shown_scores(r: dict[str, Any]) -> dict[str, float]:
    """A task's detailed scores that name its breakdowns and other metrics: the adapted ones, else (a base model
    scored zero-shot only) the zero-shot ones."""
    details = r.get("details") or {}
    return details.get("adapted") or details.get("zero_shot") or {}


_UNITS = {"vqa": "questions", "retrieval": "images", "classification": "images", "captioning": "images"}


def scored_line(result: dict[str, Any]) -> str:
    """How many examples each task's scores cover (a generative kind may score only its first ``eval_limit``), and
    of each breakdown's group where the scores count them (``n/<group>``), e.g. ``Scored: vqa 600 questions (color
    107, count 141, ...), retrieval 1000 images.``, names escaped as in the tables (:func:`cell`); "" when the result
    records none."""
    parts = []
    for name, r in result["tasks"].items():
        if r.get("n") is None:
            continue
        groups = {k[2:]: v for k, v in _shown_scores(r).items() if k.startswith("n/")}
        within = f" ({', '.join(f'{cell(g)} {int(v)}' for g, v in groups.items())})" if groups else ""
        whole = _shown_scores(r).get("groups")   # nlvr: the statements whose rows were all scored (consistency's)
        within += f" in {int(whole)} groups" if whole is not None else ""
        parts.append(f"{cell(name)} {int(r['n'])} {_UNITS.get(r.get('kind', ''), 'examples')}{within}")
    return f"Scored: {', '.join(parts)}." if parts else ""


def source_line(result: dict[str, Any]) -> str:
    """What was scored, and on which split: the run at its end, an adapter by ``eval`` (its path, and the options
    given to eval that the adapter does not record: another base model or dtype, any --precision but auto), or a
    base model without one; the tables alone read the same for a test and a val score, or for a run and a later
    ``eval`` of part of it. A task scored on another split, or on the data of another spec file, is named, and the
    ``split`` its files were read with where its spec gives one (``train[80%:]``)."""
    split = result.get("split")
    if "adapter" in result:
        what = f"by `eval` of the adapter {cell(result['adapter'])}"
        overrides = (result.get("base") or {}).get("overrides")
        if overrides:   # (eval.json "base" says what the base model was and how it was computed)
            what += f" with {cell(' '.join(overrides))} (given to eval, not read from the adapter)"
    elif "backbone" in result:
        what = f"by `eval` of the base model {cell((result['backbone'] or {}).get('backbone'))}, without an adapter"
    else:
        what = "at the end of the training run"
    other = [f"{cell(name)} on {cell(r['split'])}" for name, r in result["tasks"].items()
             if r.get("split", split) != split]
    other += [f"{cell(name)} not scored: {cell(r['reason'])}" + (f" in the data of {cell(r['data_spec'])}"
                                                                  if r.get("data_spec") else "")
              for name, r in not_scored(result).items()]
    specs = [f"{cell(name)} on the data of {cell(r['data_spec'])}" for name, r in result["tasks"].items()
             if r.get("data_spec")]
    specs += [f"{cell(name)} read split {cell(r['data_split'])} of its files" for name, r in result["tasks"].items()
              if r.get("data_split") is not None]   # (what the spec's split table gives its reader)
    line = f"Scored on the {cell(split)} split{' (' + ', '.join(other) + ')' if other else ''}, {what}"
    return line + (f"; {', '.join(specs)}" if specs else "") + "."


def selected_line(result: dict[str, Any]) -> str:
    """Which step's adapter a ``--keep-best`` run finished with (and where ``--patience`` stopped it); "" otherwise."""
    chosen = result.get("selected")
    if not chosen:
        return ""
    stop = f"; --patience stopped training at step {chosen['stopped_early_at']}" if "stopped_early_at" in chosen else ""
    return (f"Adapted: step {chosen['step']}'s adapter and heads, chosen by --keep-best on validation (mean headline "
            f"{chosen['score']:.4f}){stop}.")


def detail_keys(r: dict[str, Any]) -> list[str]:
    """A task's metrics beside its headline, in the order the report shows them: the headline's breakdown
    (``vqa_accuracy/<question type>``), then each other metric its spec lists (``per_x`` names a breakdown
    ``per_x/<...>``); keys the adapted scores (without them, the zero-shot ones) lack are left out."""
    scores = _shown_scores(r)
    head = r["metric"]
    keys = [k for k in scores if k.startswith(head + "/")]
    for m in r.get("metrics", []):
        if m != head:
            keys += [k for k in scores if k == m or k.startswith(_breakdown(r, m) + "/")]
    return list(dict.fromkeys(keys))


def _breakdown(r: dict[str, Any], metric: str) -> str:
    """What a task's ``metric`` breaks down, as its keys name it: ``per_type`` its kind's accuracy
    (``vqa_accuracy/<type>``, nlvr's ``accuracy/<type>``), another ``per_x`` itself (``per_class/<name>``)."""
    if metric != "per_type":
        return metric
    try:
        return get_kind(str(r.get("kind"))).headline_metric
    except KeyError:   # a kind not registered in this process
        return metric


def details_table(result: dict[str, Any]) -> str:
    """The other metrics of each task (``detail_keys``) as a second Markdown table; "" when there are none. A result
    without adapted scores has a zero-shot column only."""
    adapted = has_adapted(result)
    rows = []
    for name, r in result["tasks"].items():
        zs, ad = r["details"].get("zero_shot") or {}, r["details"].get("adapted")
        for k in detail_keys(r):
            if not adapted:
                rows.append(f"| {cell(name)} | {cell(k)} | {zs[k]:.4f} |")
                continue
            z, change = ("–", "–") if k not in zs else (f"{zs[k]:.4f}", _change(ad[k], zs[k]))
            rows.append(f"| {cell(name)} | {cell(k)} | {z} | {ad[k]:.4f} | {change} |")
    if not rows:
        return ""
    if not adapted:
        return "\n".join(["| task | other metrics | zero-shot |", "|---|---|---:|", *rows])
    return "\n".join(["| task | other metrics | zero-shot | adapted | change |", "|---|---|---:|---:|---:|", *rows])


def mixing_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """softmax(w_t / τ) averaged over the adapted projections of each tower: {tower: (T, n)}."""
    info = attach_info(model)
    per: dict[str, list[torch.Tensor]] = {}
    for name, bank in info.layers.items():
        if hasattr(bank, "lora_w"):
            per.setdefault(info.towers[name], []).append(bank.mixing_weights().detach().float().cpu())
    return {tower: torch.stack(ms).mean(0) for tower, ms in per.items()}


def _figure(**kwargs: Any):
    """A matplotlib Figure on its own Agg canvas, outside pyplot (nothing global is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, tight: bool = True) -> Path:
    """``fig`` written to ``path`` whole or not at all (a killed run leaves the last plot, not half a PNG)."""
    if tight:
        fig.tight_layout()
    with atomic_file(path, overwrite=True, what="plot") as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The log's rows; a line that is not a JSON object (damaged or edited by hand) is left out of the curves, said,
    rather than losing the run's other plots."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines() if path.is_file() else (), 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as e:
            row = e
        if not isinstance(row, dict) or ("loss" in row and not _plottable(row)):
            logger.warning("%s:%d: not a metrics row (%s); left out of the training curves", path, n,
                           row if isinstance(row, Exception) else str(row)[:80])
        elif row:
            rows.append(row)
    return rows


def _plottable(row: dict[str, Any]) -> bool:
    """A loss row the curves can draw: a step and numbers for its losses."""
    number = (int, float)
    return isinstance(row.get("step"), number) and all(
        isinstance(v, number) and not isinstance(v, bool)
        for k, v in row.items() if k == "loss" or k.startswith("loss/"))


def _tick(name: str, r: dict[str, Any], asked: str | None) -> str:
    """A task's label on the score plot: its name and headline, and its split where it is not the one the axis names
    (a task without a test split is scored on val)."""
    split = r.get("split", asked)
    return f"{name}\n({r['metric']}" + (f", {split} split)" if split != asked else ")")


def write_plots(run_dir: Path, result: dict[str, Any], model: nn.Module | None) -> list[Path]:
    """plots/training_curves.png, plots/zero_shot_vs_adapted.png, plots/task_mixing.png (when it applies); for a
    result without adapted scores (``model`` None: a base model without adapters), plots/zero_shot.png alone."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    rows = [r for r in _read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    if rows:
        fig = _figure(figsize=(6, 3.5))
        ax = fig.subplots()
        keys = sorted({k for r in rows for k in r if k.startswith("loss/")})
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax.plot(*zip(*pts), marker="o" if len(pts) == 1 else None, label=k.removeprefix("loss/"))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "k--", lw=1,
                marker="o" if len(rows) == 1 else None, label="total (weighted)")
        ax.xaxis.get_major_locator().set_params(integer=True)   # steps are whole (a short run's were ticked 1.25, ...)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss per task")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "training_curves.png"))

    tasks, skipped = list(result["tasks"]), not_scored(result)
    fig = _figure(figsize=(1.6 + 1.3 * (len(tasks) + len(skipped)), 3.5))
    ax = fig.subplots()
    x = torch.arange(len(tasks)).float()
    zs = [result["tasks"][t]["zero_shot"] for t in tasks]
    ad = [result["tasks"][t]["adapted"] for t in tasks]
    adapted = has_adapted(result)
    if None not in zs:  # None: the zero-shot score was skipped
        ax.bar(x - 0.2 if adapted else x, zs, 0.4, label="zero-shot", color="#9aa5b1")
    if adapted:
        ax.bar(x + 0.2, ad, 0.4, label="adapted", color="#2f6fba")
    asked = result.get("split")
    ticks = [_tick(t, result["tasks"][t], asked) for t in tasks]   # a task not scored: a tick without bars
    ticks += [f"{t}\n(not scored:\n{r['reason']})" for t, r in skipped.items()]
    ax.set_xticks(list(range(len(ticks))), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(ticks) - 0.4)   # (the ticks past the bars widened the axis only to the last tick itself)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"headline score ({asked} split)")
    ax.set_title(title(result))
    ax.legend(fontsize=8)
    written.append(_save(fig, out / ("zero_shot_vs_adapted.png" if adapted else "zero_shot.png")))

    mix = mixing_matrices(model) if model is not None else {}
    if mix:
        names = attach_info(model).config.tasks
        fig = _figure(figsize=(4.2 * len(mix) + 0.8, 0.5 * len(names) + 1.8), layout="constrained")
        axes = fig.subplots(1, len(mix), squeeze=False)
        for ax, (tower, m) in zip(axes[0], sorted(mix.items())):
            im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{tower} tower")
            ax.set_xticks(range(m.shape[1]), [f"B{i + 1}" for i in range(m.shape[1])])
            ax.set_yticks(range(m.shape[0]), names)
            for (i, j), v in zip(torch.cartesian_prod(torch.arange(m.shape[0]), torch.arange(m.shape[1])).tolist(),
                                 m.flatten().tolist()):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle("softmax(w_t / τ): how tasks share the up-projections", fontsize=9)
        written.append(_save(fig, out / "task_mixing.png", tight=False))
    return written
