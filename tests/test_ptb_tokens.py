"""tokenize_caption against rules of CoreNLP 3.4.1's PTBLexer.flex (the jar pycocoevalcap runs) where no Java output
was recorded: each case cites the rule that gives Java's output."""

from __future__ import annotations

import pytest

from mtl_lora_vl.ptb_tokens import tokenize_caption

# {ABBREV3}/{SPACENL}?[:digit:]: "No.", "fig.", "pp." keep their period only with at most one space or line break
# before the number; with two, "No" is a WORD and its period a "." token, which pycocoevalcap drops.
NUMBER_ABBREVIATION_CASES = [
    ("the No.  5 bus", "the no 5 bus"),                  # was "the no. 5 bus"
    ("see fig.   3 and pp.\u3000\u30004", "see fig 3 and pp 4"),
    ("the No. 5 bus, No.5, fig.\t3, pp.\u00a04", "the no. 5 bus no. 5 fig. 3 pp. 4"),   # one SPACENL or none
]


@pytest.mark.parametrize(("caption", "ptb"), NUMBER_ABBREVIATION_CASES)
def test_a_number_abbreviation_keeps_its_period_only_close_to_its_number(caption, ptb):
    assert tokenize_caption(caption) == ptb
