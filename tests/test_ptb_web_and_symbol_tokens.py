"""tokenize_caption against the CoreNLP 3.4.1 jar pycocoevalcap runs (-preserveLines -lowerCase, then its
punctuation filter): doubled angle brackets and web tokens glued to text. Each case is the jar's recorded output; the
last test re-checks them against the jar where Java and pycocoevalcap are installed."""

from __future__ import annotations

import shutil

import pytest

from mtl_lora_vl.ptb_tokens import tokenize_caption

# {FAKEDUCKFEET} = <<|>>: two angle brackets are one token (the longest match from the first), a third one of its own.
DOUBLED_ANGLE_BRACKET_CASES = [
    ("a >> b", "a >> b"),                                    # was "a > > b"
    ("a >>> b and c <<<< d", "a >> > b and c << << d"),      # was "a > > > b and c < < < < d"
    ("x<<y>>z, >>:) and <<b> <a@b.com>>", "x << y >> z >> :-rrb- and << b > <a@b.com> >"),
]


@pytest.mark.parametrize(("caption", "ptb"), DOUBLED_ANGLE_BRACKET_CASES)
def test_two_angle_brackets_are_one_token(caption, ptb):
    assert tokenize_caption(caption) == ptb


ALL_CASES = DOUBLED_ANGLE_BRACKET_CASES


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")
def test_the_recorded_outputs_are_the_jars():
    pytest.importorskip("pycocoevalcap", reason="needs pycocoevalcap (the test extra)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, (c, _) in enumerate(ALL_CASES)})
    assert [out[i][0].replace("\xa0", " ") for i in range(len(ALL_CASES))] == [ptb for _, ptb in ALL_CASES]
