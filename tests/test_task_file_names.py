"""config.task_file_problem: a task name with a lone surrogate (from a JSON "\\udc80" escape or os.fsdecode of a
non-UTF-8 name) is refused by name, not by a UnicodeEncodeError from the length check."""

from __future__ import annotations

import pytest

from mtl_lora_vl.config import check_task_file_names, task_file_problem


def test_a_lone_surrogate_is_refused_by_name():
    assert "UTF-8" in task_file_problem("vqa\udc80")
    with pytest.raises(ValueError, match=r"predictions: task name 'vqa\\udc80' contains a character"):
        check_task_file_names(["vqa\udc80", "ok"], "predictions", "rename it")


def test_multibyte_names_at_the_byte_limit():
    assert task_file_problem("é" * 64) is None and task_file_problem("é" * 64 + "a") is not None


@pytest.mark.parametrize("names", [["VQA", "vqa"], ["Été", "été"]])
def test_case_twins_are_refused_by_every_file_naming_place(names):
    """predictions/<task>.jsonl and an export's OUT/<task>/ of 'VQA' and 'vqa' are one file on macOS and Windows:
    only save_adapter refused them."""
    with pytest.raises(ValueError, match=r"predictions: task names '.*', '.*' differ only in case \(one file on "
                                         r"macOS and Windows file systems\), rename one"):
        check_task_file_names(names + ["ok"], "predictions", "rename one")


def test_normalisation_twins_are_refused():
    """'café' composed (NFC) and decomposed (NFD) are two names but one file on APFS."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    with pytest.raises(ValueError, match=r"export_lora: task names .* differ only in Unicode normalisation "
                                         r"\(.*'caf\\xe9' and 'cafe\\u0301'.*macOS.*\), rename"):
        check_task_file_names([nfc, nfd], "export_lora", "rename one")
    with pytest.raises(ValueError, match="differ only in case and Unicode normalisation"):
        check_task_file_names(["CAF\u00c9", nfd], "export_lora", "rename one")
    check_task_file_names([nfc, "cafe"], "export_lora", "rename one")   # distinct names pass


def test_names_of_other_types_get_the_message():
    with pytest.raises(ValueError, match=r"x: task names None, 1 cannot name a file, fix"):
        check_task_file_names([None, 1], "x", "fix")


def test_export_lora_and_predictions_refuse_case_twins():
    from mtl_lora_vl.evaluation.predictions import check_file_names
    from mtl_lora_vl.io.exports import _task_list

    with pytest.raises(ValueError, match=r"predictions: task names 'VQA', 'vqa' differ only in case"):
        check_file_names({"VQA": None, "vqa": None})
    with pytest.raises(ValueError, match=r"export_lora: task names 'VQA', 'vqa' differ only in case"):
        _task_list(["vqa", "VQA"])


@pytest.mark.parametrize("names", [["σ", "ς"], ["Straße", "STRASSE"], ["ΣΊΣΥΦΟΣ", "Σίσυφος"]])
def test_case_twins_are_found_by_case_folding_not_lower_case(names):
    """Twins were keyed on lower(): 'σ' and final 'ς' (one file on NTFS, whose upcase table maps both to 'Σ') and
    'Straße' / 'STRASSE' passed. casefold() folds them; compatibility forms (NFKC) are left apart."""
    with pytest.raises(ValueError, match=r"predictions: task names .* differ only in case"):
        check_task_file_names(names, "predictions", "rename one")
    check_task_file_names(["\uff21", "A"], "predictions", "rename one")   # fullwidth 'Ａ': no file system folds it
