"""The score plot marks a task scored on another split than the one asked for (a task without a test split is
scored on val): its axis label names the asked split, which the task's bars are not."""
from torch import nn


def _task(split: str) -> dict:
    return {"metric": "top1", "zero_shot": 0.3, "adapted": 0.4, "change": 0.1, "kind": "classification",
            "split": split, "n": 10, "metrics": ["top1"], "details": {"zero_shot": {"top1": 0.3},
                                                                       "adapted": {"top1": 0.4}}}


def test_score_plot_marks_a_task_that_fell_back_to_val(tmp_path, monkeypatch):
    from mtl_lora_vl.evaluation import report

    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    result = {"tasks": {"cls": _task("test"), "vqa": _task("val")}, "split": "test"}
    report.write_plots(tmp_path, result, nn.Linear(1, 1))
    ax = dict(figs)["zero_shot_vs_adapted.png"].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "test split" in ax.get_ylabel()
    assert "val" not in labels[0] and "val split" in labels[1], labels

    figs.clear()   # a zero-shot only plot (a base model scored without an adapter) marks it too
    for r in result["tasks"].values():
        r["adapted"] = r["change"] = None
        r["details"]["adapted"] = None
    report.write_plots(tmp_path, result, None)
    labels = [t.get_text() for t in dict(figs)["zero_shot.png"].axes[0].get_xticklabels()]
    assert "val" not in labels[0] and "val split" in labels[1], labels
