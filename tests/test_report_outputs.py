"""The evaluation outputs: the table adds up as printed, plots show one log row and label their axes, a wrong
--adapter or --backbone is named as such, eval.json is written last (it marks a finished evaluation)."""
import json

import pytest
from torch import nn

import mtl_lora_vl as mlv


def _result(zs, ad, metric="mean_recall", task="retrieval"):
    return {"tasks": {task: {"metric": metric, "zero_shot": zs, "adapted": ad, "change": ad - zs,
                             "kind": "retrieval", "split": "test", "n": 500, "metrics": [metric],
                             "details": {"zero_shot": {metric: zs, "t2i_r1": 0.16666666666666666},
                                         "adapted": {metric: ad, "t2i_r1": 0.16953316953316952}}}},
            "split": "test"}


def test_change_column_is_the_difference_of_the_shown_scores():
    """A row must add up as printed (0.3752 -> 0.3948 is +0.0196, not +0.0195)."""
    from mtl_lora_vl.evaluation.report import details_table, markdown_table

    # the retrieval row of a real 4-step run (builtin CLIP, --dropout 0.3)
    r = _result(0.3752148512148512, 0.39475593775593776)
    for table in (markdown_table(r), details_table(r)):
        for line in table.splitlines()[2:]:
            z, a, change = (c.strip() for c in line.strip("|").split("|")[-3:])
            assert float(change) == pytest.approx(round(float(a) - float(z), 4)), line


def test_training_curve_of_one_log_row_is_visible(tmp_path, monkeypatch):
    """--steps 5 --log-every 10 logs one row; a line of one point draws nothing (an empty plot)."""
    from mtl_lora_vl.evaluation import report

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"loss/a": 1.0, "loss": 1.0, "step": 5}) + "\n")
    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    report.write_plots(tmp_path, _result(0.3, 0.4, "top1", "a"), nn.Linear(1, 1))
    fig = dict(figs)["training_curves.png"]
    for line in fig.axes[0].lines:
        assert len(line.get_xdata()) > 1 or line.get_marker() not in (None, "", "None", " "), line.get_label()


def test_score_plot_has_a_y_label(tmp_path, monkeypatch):
    """The zero-shot vs adapted bars label their y axis (they had none; the curves plot has one)."""
    from mtl_lora_vl.evaluation import report

    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    report.write_plots(tmp_path, _result(0.3, 0.4, "top1", "a"), nn.Linear(1, 1))
    assert dict(figs)["zero_shot_vs_adapted.png"].axes[0].get_ylabel()


def test_missing_adapter_is_named_before_an_existing_default_out(tmp_path):
    """eval --adapter RUN/adaptr (a typo) beside an earlier RUN/eval-test was told to pass --overwrite."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter

    run = tmp_path / "run"
    (run / "eval-test").mkdir(parents=True)
    (run / "eval-test" / "eval.json").write_text("{}\n")
    with pytest.raises(mlv.AdapterFileError, match="adaptr.*does not exist"):
        evaluate_adapter(run / "adaptr", device="cpu")
    assert (run / "eval-test" / "eval.json").read_text() == "{}\n"   # nothing written


def test_backbone_override_that_cannot_load_is_not_called_the_trained_one(tmp_path):
    """--backbone open_clip:ViT-B-32 on a builtin adapter said 'the base model ... that the adapter was
    trained on'; it names what was given and what the adapter records."""
    from mtl_lora_vl.io.pretrained import _base_backbone, _Named

    doc = {"base": {"backbone": "builtin", "pretrained": None}}
    with pytest.raises(mlv.AdapterFileError) as e:
        _base_backbone(tmp_path / "adapter", doc, _Named(doc, "open_clip:ViT-B-32", None, "--backbone", "--pretrained"),
                       "cpu")
    msg = str(e.value)
    assert "records backbone 'builtin'" in msg, msg
    assert "--backbone" in msg


def test_eval_json_is_written_last_so_it_marks_a_complete_evaluation(tmp_path, monkeypatch):
    """A run interrupted while plotting kept eval.json (what bench and eval --out take as a finished
    evaluation) without report.md; checkpoint._RUN_OUTPUTS says both are written atomically, and they were not."""
    from mtl_lora_vl.evaluation import evaluate as ev

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "write_plots", boom)
    with pytest.raises(KeyboardInterrupt):
        ev.write_outputs(tmp_path, _result(0.3, 0.4), nn.Linear(1, 1))
    assert not (tmp_path / "eval.json").exists()


def test_a_plot_is_written_whole_or_not_at_all(tmp_path):
    """A run killed while a plot is saved leaves the last plot, not half a PNG (review 182: savefig wrote the
    final path in place)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtl_lora_vl.evaluation.report import _save

    path = tmp_path / "loss.png"
    path.write_bytes(b"the last plot")
    fig = plt.figure()

    def broken(target, **kw):
        open(target, "wb").write(b"\x89PNG half")
        raise KeyboardInterrupt

    fig.savefig = broken
    with pytest.raises(KeyboardInterrupt):
        _save(fig, path)
    assert path.read_bytes() == b"the last plot" and [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    fig = plt.figure()
    assert _save(fig, path) == path and path.read_bytes().startswith(b"\x89PNG") and len(list(tmp_path.iterdir())) == 1
    plt.close("all")


def test_per_type_is_shown_whatever_metric_heads_the_task():
    """Review 216: an nlvr spec listing ``metrics = ["consistency", "per_type"]`` showed no per-type scores in the
    report (its breakdown is ``accuracy/<type>``, which only an accuracy headline brought in)."""
    from mtl_lora_vl.evaluation.report import details_table

    scores = {"accuracy": 0.5, "accuracy/count": 0.25, "n/count": 4.0, "consistency": 0.2, "groups": 5.0, "n": 8.0}
    r = {"metric": "consistency", "zero_shot": 0.1, "adapted": 0.2, "change": 0.1, "kind": "nlvr", "split": "test",
         "n": 8, "metrics": ["consistency", "per_type"], "details": {"zero_shot": scores, "adapted": scores}}
    assert "| nlvr | accuracy/count | 0.2500 | 0.2500 | +0.0000 |" in details_table({"tasks": {"nlvr": r}})


def test_a_damaged_metrics_line_is_left_out_of_the_curves_not_the_plots(tmp_path, monkeypatch, caplog):
    """A half-written or hand-edited metrics.jsonl line crashed write_plots (JSONDecodeError / KeyError 'step'),
    so the run lost its score plot too; the line is said and left out."""
    from mtl_lora_vl.evaluation import report

    rows = [json.dumps({"loss/a": 1.0, "loss": 1.0, "step": 1}), '{"loss/a": 0.9, "lo', json.dumps([1, 2]),
            json.dumps({"loss": 0.5}), json.dumps({"loss": "x", "step": 3}), json.dumps({"loss/a": 0.8, "loss": 0.8,
                                                                                       "step": 4})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    report.write_plots(tmp_path, _result(0.3, 0.4, "top1", "a"), nn.Linear(1, 1))
    assert {"training_curves.png", "zero_shot_vs_adapted.png"} <= dict(figs).keys()
    total = [ln for ln in dict(figs)["training_curves.png"].axes[0].lines if ln.get_label() == "total (weighted)"]
    assert list(total[0].get_xdata()) == [1, 4]
    said = [r.getMessage() for r in caplog.records if "not a metrics row" in r.getMessage()]
    assert [m.split(":")[1] for m in said] == ["2", "3", "4", "5"], said


def test_a_run_with_zero_shot_skipped_is_not_titled_zero_shot_vs_adapted(tmp_path, monkeypatch):
    """--skip-zero-shot: report.md and the score plot said "Zero-shot vs adapted" over adapted scores alone."""
    from mtl_lora_vl.evaluation import report
    from mtl_lora_vl.evaluation.evaluate import write_outputs

    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    skipped = _result(0.3, 0.4, "top1", "a")
    skipped["tasks"]["a"]["zero_shot"] = skipped["tasks"]["a"]["change"] = None
    write_outputs(tmp_path, skipped, nn.Linear(1, 1))
    assert (tmp_path / "report.md").read_text().startswith("# Adapted (zero-shot skipped)\n")
    assert dict(figs)["zero_shot_vs_adapted.png"].axes[0].get_title() == "Adapted (zero-shot skipped)"
    write_outputs(tmp_path, _result(0.3, 0.4, "top1", "a"), nn.Linear(1, 1))
    assert (tmp_path / "report.md").read_text().startswith("# Zero-shot vs adapted\n")


@pytest.mark.parametrize("adapted", [True, False])
def test_names_with_markdown_markup_keep_each_score_under_its_column(adapted):
    """A '|' in a class name (``per_class/T-shirt|top``) or a task given in code split its row into one cell too many,
    so Markdown showed the scores under the wrong columns; '*' and a word-edge '_' (``__background__``) turned into
    emphasis. Each is escaped: every row has the header's cells, and the names read back as given."""
    import re

    from mtl_lora_vl.evaluation.report import details_table, markdown_table

    names = ["top1", "per_class/T-shirt|top", "per_class/__background__", "per_class/x_y*"]
    scores = {k: 0.25 * i for i, k in enumerate(names)}
    r = {"metric": "top1", "zero_shot": 0.0, "adapted": 0.5 if adapted else None, "kind": "classification",
         "split": "val", "n": 8, "metrics": ["top1", "per_class"],
         "details": {"zero_shot": scores, "adapted": scores if adapted else None}}
    result = {"tasks": {"a|b": r, "vqa": dict(r, split="test")}, "split": "test"}
    for table in (markdown_table(result), details_table(result)):
        rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table.splitlines()]
        assert {len(row) for row in rows} == {len(rows[0])}, table
        assert rows[2][0] == "a\\|b", table
    assert "| a\\|b | val | top1 | 0.0000 |" in markdown_table(result)
    shown = [row.split(" | ")[1] for row in details_table(result).splitlines()[2:5]]
    assert shown == ["per_class/T-shirt\\|top", "per_class/\\_\\_background\\_\\_", "per_class/x_y\\*"]


def test_training_curves_mark_whole_steps(tmp_path, monkeypatch):
    """A short run's curves (steps 1, 2, 3) were ticked at steps 1.25, 1.5, 1.75, ...: steps are whole numbers."""
    from mtl_lora_vl.evaluation import report

    rows = [{"loss/a": 1.0 / s, "loss": 1.0 / s, "step": s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    report.write_plots(tmp_path, _result(0.3, 0.4, "top1", "a"), nn.Linear(1, 1))
    ax = dict(figs)["training_curves.png"].axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_eval_says_where_it_wrote_the_results(tmp_path, caplog):
    """eval printed the table and nothing else: where its results went (the default --out, ADAPTER/../eval-<split>,
    is chosen for the user) was said nowhere."""
    import logging

    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.evaluation.evaluate import _write

    out = tmp_path / "eval-test"
    with caplog.at_level(logging.INFO, logger="mtl_lora_vl"):
        _write(out, _result(0.3, 0.4), None, DistInfo())
    assert (out / "eval.json").is_file()
    assert any(str(out) in r.getMessage() and "report.md" in r.getMessage() for r in caplog.records), caplog.text


def test_a_word_inner_underscore_after_a_non_ascii_letter_is_left_as_is():
    """Markdown reads '_' between letters of any script as text ('café_noir', 'straße_2'): such a name was fine
    before escaping and prints unchanged; edge underscores are still escaped."""
    from mtl_lora_vl.evaluation.report import cell

    assert [cell(n) for n in ("per_class/café_noir", "straße_2", "été_", "_ñ")] == [
        "per_class/café_noir", "straße_2", "été\\_", "\\_ñ"]


def test_scored_line_escapes_task_and_group_names():
    """The "Scored:" line under the tables wrote a task's and its groups' names as given: a question type
    ``what_is`` (word-edge '_' is fine inside a word) or ``__bg__`` / ``a|b`` / ``*star*`` showed as emphasis or lost
    characters in report.md. It escapes them as the tables do (``cell``); plain names are unchanged."""
    from mtl_lora_vl.evaluation.report import cell, scored_line

    r = _result(0.3, 0.4, "vqa_accuracy", "my_vqa")
    r["tasks"]["my_vqa"]["kind"] = "vqa"
    groups = ["__bg__", "a|b", "*star*", "`code`", "yes_no", "color"]
    r["tasks"]["my_vqa"]["details"]["adapted"].update({f"n/{g}": 2 for g in groups})
    want = ", ".join(f"{cell(g)} 2" for g in groups)
    assert scored_line(r) == f"Scored: my_vqa 500 questions ({want})."
    assert "\\_\\_bg\\_\\_ 2, a\\|b 2, \\*star\\* 2, \\`code\\` 2, yes_no 2, color 2" in scored_line(r)
    r["tasks"]["_edge"] = r["tasks"].pop("my_vqa")
    assert scored_line(r).startswith("Scored: \\_edge 500 questions")


def test_report_says_which_split_and_what_was_scored(tmp_path, monkeypatch):
    """`eval --split val --out X` wrote a report.md, a printed table and a plot that read like the run's test report
    (the split was in eval.json only): the report names the split and what was scored, the plot's axis the split."""
    from mtl_lora_vl.evaluation import report
    from mtl_lora_vl.evaluation.evaluate import write_outputs

    monkeypatch.setattr(report, "mixing_matrices", lambda model: {})
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    run = _result(0.3752, 0.3941)
    printed = write_outputs(tmp_path / "run", run, nn.Linear(1, 1))
    assert "\n\nScored on the test split, at the end of the training run.\n" in printed
    assert "test split" in dict(figs)["zero_shot_vs_adapted.png"].axes[0].get_ylabel()

    ev = _result(0.3801, 0.3702)
    ev["split"] = ev["tasks"]["retrieval"]["split"] = "val"
    ev["adapter"] = "/runs/a/adapter"
    ev["tasks"]["retrieval"]["data_spec"] = "/specs/other.toml"
    printed = write_outputs(tmp_path / "ev", ev, nn.Linear(1, 1))
    line = ("Scored on the val split, by `eval` of the adapter /runs/a/adapter; retrieval on the data of "
            "/specs/other.toml.")
    assert line in printed and line in (tmp_path / "ev" / "report.md").read_text()
    assert figs[-1][0] == "zero_shot_vs_adapted.png" and "val split" in figs[-1][1].axes[0].get_ylabel()

    fell_back = _result(0.3, 0.4)
    fell_back["tasks"]["retrieval"]["split"] = "val"   # (no test split: scored on val, as the split column says)
    fell_back["backbone"] = {"backbone": "builtin"}
    assert ("Scored on the test split (retrieval on val), by `eval` of the base model builtin, without an adapter."
            in write_outputs(tmp_path / "base", fell_back, None))
