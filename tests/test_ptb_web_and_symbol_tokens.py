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


# PTB takes the longest match of all its rules; a URL (LIKELYURL: up to its "com", "org"... or a 2-4 letter ending after
# "www.") gives way to a longer WORD, e-mail address or hyphenated word starting at the same character.
URL_LONGEST_MATCH_CASES = [
    ("see www.x.comdog and a.orgs here", "see www.x.comdog and a.orgs here"),   # was "www.x.comd og", "a.org s"
    ("the on.two.are.orgs sign, sittingtwo.orgs@sitting", "the on.two.are.orgs sign sittingtwo.orgs@sitting"),
    ("WWW.two.comdog/to the x.com.; y", "www.two.comdog / to the x.com. y"),   # was "www.two.comd og/to", "x.com"
    ("visit bluewww.pizza.holding.comdog now", "visit bluewww.pizza.holding.comdog now"),
    ("a www.x.com/dog, x.org-dog and a_b.small.commons", "a www.x.com/dog x.org-dog and a_b small.commons"),
]


@pytest.mark.parametrize(("caption", "ptb"), URL_LONGEST_MATCH_CASES)
def test_a_url_gives_way_to_a_longer_token(caption, ptb):
    assert tokenize_caption(caption) == ptb


# A no-break space or other Unicode space is a character like any other inside LIKELYURL's host ([^ \t\n\f\r...]), so
# the URL runs over it ("with\xa0man.com" is one token; its no-break space read as a space, as in a phone number), and
# "mons" after it is a word of its own; no URL starts with one.
URL_UNICODE_SPACE_CASES = [
    ("a with\xa0man.commons and dog\u3000man.com y", "a with man.com mons and dog\u3000man.com y"),   # were "man.com"
    ("x \xa0\xa0www.woman.net y", "x www.woman.net y"),
]


@pytest.mark.parametrize(("caption", "ptb"), URL_UNICODE_SPACE_CASES)
def test_a_unicode_space_is_inside_a_url(caption, ptb):
    assert tokenize_caption(caption) == ptb


# PTB's EMAIL is (&lt;|<)?...@...(&gt;|>)? and its URLs hold "&lt;" like any other characters: they stay as written
# there; elsewhere "&lt;" and "&gt;" are the tokens "<" and ">" (LESSTHAN, GREATERTHAN), never joined to another "<".
ANGLE_BRACKET_ENTITY_CASES = [
    ("<white@bike.org&gt; and &lt;cat@small.de,= x", "<white@bike.org&gt; and &lt;cat@small.de,= x"),   # were split
    ("&LT;a@b.com&GT; and http://x.com/a&lt;b c", "&lt;a@b.com&gt; and http://x.com/a&lt;b c"),
    ("x&lt;y, &lt;:) 5&gt;3, &gt;&gt; b and &lt;b>", "x < y < :-rrb- 5 > 3 > > b and < b >"),   # as before
]


@pytest.mark.parametrize(("caption", "ptb"), ANGLE_BRACKET_ENTITY_CASES)
def test_an_angle_bracket_entity_stays_in_an_email_address_or_url(caption, ptb):
    assert tokenize_caption(caption) == ptb


ALL_CASES = (DOUBLED_ANGLE_BRACKET_CASES + URL_LONGEST_MATCH_CASES + URL_UNICODE_SPACE_CASES
             + ANGLE_BRACKET_ENTITY_CASES)


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")
def test_the_recorded_outputs_are_the_jars():
    pytest.importorskip("pycocoevalcap", reason="needs pycocoevalcap (the test extra)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, (c, _) in enumerate(ALL_CASES)})
    assert [out[i][0].replace("\xa0", " ") for i in range(len(ALL_CASES))] == [ptb for _, ptb in ALL_CASES]
