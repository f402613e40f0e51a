"""Evaluation metrics of the task kinds: VQA accuracy, retrieval recall, captioning scores, classification.

Every headline metric is a fraction in [0, 1], higher is better (CIDEr is the exception: it is
unbounded above, as defined by its authors).

VQA follows the official VQA evaluation (``vqaEval.py`` of the VQA API, GT-Vision-Lab/VQA, as of 2016:
commit 458a8b2):

* punctuation: each mark of ``_PUNCT`` is deleted when it touches a space or when the answer holds a
  digit-comma-digit group ("1,000"), otherwise it becomes a space ("black/white" -> "black white");
  a period is deleted unless a digit follows it ("3.5" stays, "yes." -> "yes");
* lowercase; number words "none", "zero" .. "ten" become digits; the articles "a", "an", "the" go;
  apostrophe-less contractions get their apostrophes back ("dont" -> "don't");
* accuracy of a prediction is ``min(#humans who gave it / 3, 1)`` averaged over the subsets that leave
  one human out (ten subsets of nine for VQAv2's ten answers; the official script does this for any
  number of answers).

With fewer than three answers that formula cannot reach 1 (one answer always scores 0), so such
questions (GQA-style single-answer data) are scored by exact match after normalisation instead.

Two deliberate, documented departures: the ground-truth answers go through the full normalisation
too (the official script only strips their punctuation, and only when the humans disagree), and the
contraction table also accepts every apostrophe-less spelling of a two-apostrophe form
("couldntve" as well as the official "couldnt've" / "couldn'tve"). Neither changes a score on VQAv2
in practice; both make the function symmetric and predictable. One consequence is closed off: a human answer
"a" or "the" normalises to nothing, and so would an empty generation, "the" or "A"; a prediction that normalises
to nothing scores 0 (as in the official script, which never empties a human answer). The script's 2021 master
(a013f00) differs more: where all humans gave one answer it normalises neither side, so an un-normalised
prediction ("Yes", "two" for "2") scores 0 there and 1 here (and in the 2016 script); a generated answer is
such a prediction.
Two slips of the official script are not copied: its table maps "somebody'd" to "somebodyd" (the pair written
backwards; kept as written here), and its period strip passes ``re.UNICODE`` as ``count``, so it removes only the
first 32 periods of an answer (all of them here).
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mtl_lora_vl.caption_metrics import bleu, cider_d

# ----------------------------------------------------------------------------------------------
# VQA answer normalisation
# ----------------------------------------------------------------------------------------------

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) look-ahead that always
# holds, so in effect a period is removed whenever no digit follows it. We state that effect directly.
_PERIOD = re.compile(r"\.(?!\d)")

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contracted forms whose apostrophe-less spellings the official table restores. Words that are also
# ordinary English words without the apostrophe ("its", "well", "were", "lets", "ill", "shed", ...) are
# absent from the official table, and so from this list.
_CONTRACTED_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've "
    "shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll "
    "someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're "
    "you've"
).split()


def _build_contractions(forms: Sequence[str]) -> dict[str, str]:
    """Map every spelling of each form with one or more apostrophes dropped back to the form."""
    table: dict[str, str] = {}
    for form in forms:
        positions = [i for i, ch in enumerate(form) if ch == "'"]
        for k in range(1, len(positions) + 1):
            for drop in itertools.combinations(positions, k):
                key = "".join(ch for i, ch in enumerate(form) if i not in drop)
                table.setdefault(key, form)
    return table


_CONTRACTIONS = _build_contractions(_CONTRACTED_FORMS)


def _process_punctuation(text: str) -> str:
    has_number_comma = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        # The official test looks at the original text, not the text being rewritten.
        if has_number_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise a VQA answer as the official VQA evaluation does (see the module docstring).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a str, got {type(text).__name__}: {text!r}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Standard VQA accuracy of one prediction against the human answers of one question.

    ``min(#matching humans / 3, 1)`` after normalising both sides, averaged over the leave-one-out subsets
    of the humans as the official script does (for VQAv2's ten answers: the ten subsets of nine). With one
    or two answers, where that formula cannot reach 1, exact match: 1.0 when any answer matches.
    """
    if isinstance(answers, str):
        raise TypeError("vqa_accuracy: `answers` must be a sequence of answer strings, not one str "
                        f"({answers!r}); wrap it in a list")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy: `answers` is empty; a question needs at least one human answer")
    pred = normalize_answer(prediction)
    if not pred:   # nothing left to match ("", "the", "A"): the official script gives it no credit either
        return 0.0
    gts = [normalize_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    if len(gts) < 3:
        return float(matches > 0)
    # Leaving out a matching human leaves matches-1 among the others, any other leaves matches.
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


# ----------------------------------------------------------------------------------------------
# Inputs: tensors, numpy arrays or nested lists
# ----------------------------------------------------------------------------------------------

def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a torch tensor, a numpy array or a nested list; got "
                        f"{type(x).__name__} ({e})") from e


def _as_index_tensor(x: Any, name: str, where: str, what: str = "class indices") -> torch.Tensor:
    """``x`` as a long tensor of indices; float and bool values are refused (a float label was truncated)."""
    t = _as_tensor(x, name)
    if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex):   # [] reads as float64
        raise ValueError(f"{where}: {name} must hold integer {what}, got {t.dtype}")
    return t.long()


# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------

def retrieval_recall(similarity: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval, and their mean.

    ``similarity`` is (n_images, n_texts); ``text_to_image[j]`` is the image index of text j, so an image
    may own several texts (COCO: five). ``i2t_rK`` is the fraction of images for which any of their own
    texts is among their top K texts; ``t2i_rK`` the fraction of texts whose image is among their top K
    images; ``mean_recall`` the mean of all those numbers. Images that own no text are left out of the
    i2t average (they still compete as distractors in t2i). Ties count against the query: an item
    scored equal to the correct one is ranked ahead of it, so a constant matrix scores the worst possible (0 where K is below the candidates), not 1.
    """
    sim = _as_tensor(similarity, "similarity")
    t2i = _as_index_tensor(text_to_image, "text_to_image", "retrieval_recall", "image indices")
    if sim.ndim != 2:
        raise ValueError(f"retrieval_recall: similarity must be 2-D (n_images, n_texts), got shape "
                         f"{tuple(sim.shape)}")
    n_img, n_txt = sim.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"retrieval_recall: similarity is empty (shape {tuple(sim.shape)})")
    if t2i.ndim != 1 or t2i.shape[0] != n_txt:
        raise ValueError(f"retrieval_recall: text_to_image must be 1-D with one image index per text "
                         f"(similarity has {n_txt} texts as columns), got shape {tuple(t2i.shape)}; if your "
                         "matrix is texts x images, pass similarity.T")
    t2i = t2i.to(sim.device)
    if int(t2i.min()) < 0 or int(t2i.max()) >= n_img:
        raise ValueError(f"retrieval_recall: text_to_image has indices in [{int(t2i.min())}, {int(t2i.max())}] "
                         f"but similarity has {n_img} images (rows)")
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"retrieval_recall: ks must be positive integers, got {tuple(ks)}")
    ks = tuple(int(k) for k in ks)
    if not sim.dtype.is_floating_point:
        sim = sim.float()
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()
    if torch.isnan(sim).any():
        raise ValueError("retrieval_recall: similarity contains NaN; check the embeddings (e.g. a zero vector "
                         "normalised to NaN)")

    cols = torch.arange(n_txt, device=sim.device)
    # text -> image: rank of the correct image = number of other images scored >= it.
    correct = sim[t2i, cols]                                          # (n_txt,)
    t2i_rank = (sim >= correct[None, :]).sum(0) - 1                   # (n_txt,)

    # image -> text: rank of the best own text = number of other texts scored >= it.
    own = torch.zeros(n_img, n_txt, dtype=torch.bool, device=sim.device)
    own[t2i, cols] = True
    best_own = sim.masked_fill(~own, float("-inf")).amax(1)           # (n_img,)
    has_text = own.any(1)
    i2t_rank = ((sim >= best_own[:, None]) & ~own).sum(1)[has_text]   # (n_img_with_text,)

    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).double().mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i_rank < k).double().mean())
    out["mean_recall"] = float(sum(out.values()) / len(out))
    return out


# ----------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------

# Tokens as pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1, lowercased) leaves them once it has dropped its
# punctuation tokens: clitics split off ("do n't", "man 's"), as are "cannot" and the like ("can not", "gon na");
# hyphens and slashes inside a word and [.:,] between digits kept ("black-and-white", "and/or", "3.5", "10:30",
# "1,000"; "5:00pm" is "5:00 pm", "v1.2" is "v1 .2"), as is a number's sign ("-5", "+1"); PTB's apostrophe words
# kept ("o'clock", "ne'er", "'80s", "rock 'n' roll", "'cause"), other apostrophes inside a word split it ("6'2" is
# "6 2"); dotted abbreviations ("u.s.", "ph.d.") and CoreNLP's abbreviations with their period ("st.", "dr.",
# "etc.", a single ASCII letter; "No." only before a number; "Wash." only capitalised -- the lists below are what
# the Java tokenizer keeps, probed word by word); "&" kept between capitals ("B&W", "AT&T") and split elsewhere
# ("b & w", "rock & roll"); other symbols kept as tokens ("&", "%", "$"), brackets spelled as PTB spells them
# (lowercased, they escape pycocoevalcap's filter: "-lrb-"); words joined by a period with no space after it
# kept whole ("bed.it", "mt.everest"), as is a number's leading period (".5"); the PTB punctuation tokens
# (. , : ; ? ! - -- ... "…" and quotes) dropped, runs such as "!!" kept.
_ABBREVIATIONS = (
    "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri"        # months, days
    "|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt"
    "|wisc?|wyo"                                                                          # states
    "|mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave"
    "|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc"   # titles
    "|jr|sr|bros|blvd|rd|esq|bldg"                                                        # addresses
    "|inc|cos?|corp|p?pt(?-i:[ye])s?|ltd|plc|rt|bancorp|dept|bhd|assn|univ|intl|sys|invt|elec|natl|m(?-i:[ft])g"
    "|ph|tel|est|ext|sq|ft|etc|al|seq|vs|alex|wm|jos|cie|cf|treas|(?-i:[A-Za-z])"     # and an ASCII letter
)
_CAPITALISED_ABBREVIATIONS = "A(?i:rk|z)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
_NUMBER_ABBREVIATIONS = "nos?|prop|figs?|pp|op|ca|art"   # kept only before a number ("no. 5"; "says no." is "no")
# A single letter's period goes when a capitalised word of this list follows it, as PTB reads it as a sentence end
# ("plan B. The dog" is "plan b the dog"; "plan B. the dog" keeps "b.").
_SENTENCE_STARTS = "|".join(f"(?-i:{w[0]}){re.escape(w[1:])}" for w in (
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr. Ms. Now"
    " Once One Other Our She Since So Some Such That The Their Then There These They This We When While What Yet You"
).split())
# Apostrophe words PTB keeps whole (its APOWORD and THING rules); any other apostrophe inside a word splits it and
# is dropped ("6'2" -> "6 2", "gov't" -> "gov t", "y'all" -> "y' all"). A clitic ('s 're 've 'll 'd 'm) or n't
# always splits off the word before it; it is a token of its own unless a letter follows ("it'sa" -> "it sa").
_REDAUX = "'(?:[sdm]|re|ve|ll)"
_NOT_REDAUX = r"(?!(?:[sdm]|re|ve|ll)(?![\w-]))"   # where the clitic rule ties with a longer one, the clitic wins
_APOSTROPHE_WORDS = (
    r"cont'd\.|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|cap'n|c'est|(?-i:O)'o"
    rf"|(?:dunkin|somethin|ol)'{_NOT_REDAUX}"
    rf"|[dol]'{_NOT_REDAUX}[^\W_]{{2,}}(?:[-_](?:[dol]')?[^\W_]+)*"       # o'clock, d'oh, l'oreal, o'neil
    rf"|(?-i:[A-HJ-XZn])'{_NOT_REDAUX}[^\W\d_]{{2,}}"                    # O'Neil, B'nai, n'ts ("do n'ts")
    rf"|[^\W\d_]+(?-i:[aeiouyAEIOUY])'{_NOT_REDAUX}(?-i:[aeiouA-Z])[^\W\d_]*"   # ne'er, Hawai'i
    r"|'(?:em|till?|cause|[2-9]0s|n'|n(?![a-z]))|'t(?=is|was)|'\d\d(?!\S)"   # 'em, 'n', '80s, 'tis, '08
)
# Combining marks stay inside their word, as in PTB ("e\u0301", Devanagari and Thai vowel signs); \w lacks them.
_MARK_CODES = [c for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M"]
_MARKS = "".join(f"{chr(run[0][1])}-{chr(run[-1][1])}" for run in (   # as ranges of consecutive code points
    list(r) for _, r in itertools.groupby(enumerate(_MARK_CODES), key=lambda p: p[1] - p[0])))
_ASSIMILATION = re.compile(r"(?<![\w-])(can(?=not(?![\w-]))|gon(?=na(?![\w-]))|got(?=ta(?![\w-]))|wan(?=na(?![\w-]))"
                           r"|lem(?=me(?![\w-]))|gim(?=me(?![\w-])))", re.I)   # whole words ("wanna-be" stays)
# Web and chat tokens PTB keeps whole: SGML tags, URLs (its FULLURL and LIKELYURL), e-mail addresses, @names,
# #hashtags, smileys (its parentheses spelled -lrb- -rrb-).
_WEB = (
    r"<(?:[!?][a-z-][^>\r\n]*|/[a-z][a-z0-9_:.-]*"
    r"|[a-z][a-z0-9_:.-]*(?: +[a-z][a-z0-9_:.-]*(?: *= *(?:'[^']*'|\"[^\"]*\"))?)* */?) *>"
    r"|https?://[^\s\"<>|(){}]+[^\s\"<>|.!?(){},-]"
    r"|(?:www\.(?:[^\s\"<>|.!?(){},]+\.)+[a-z]{2,4}|(?-i:(?:[^\s\"`'<>|.!?(){}$\x2c-\x5f]+\.)+)(?:com|net|org|edu))"
    r"(?:/[^\s\"<>|()]+[^\s\"<>|.!?(){},-])?"
    r"|<?[a-z0-9][^\s\"<>|(){}]*@(?:[^\s\"<>|(){}.]+\.)*[^\s\"<>|(){}.]+>?"
    rf"|c\+\+|[cf]#|@[a-z_][a-z_0-9]*|#(?:[^\W\d_]|[{_MARKS}])+"
    r"|(?-i:[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]])(?![a-z0-9])"
    r"|(?-i:[-^=~<>']_[-^=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\))"   # ^_^ (^_^) (-.-)
)
_KEEP_PERIOD = r"(?:\.(?=[,;:\u3001]))?"   # a word keeps a period that a comma, semicolon or colon follows
_PTB_TOKEN = re.compile(
    rf"{_WEB}|n't(?![a-z])|{_REDAUX}(?![a-z])|{_APOSTROPHE_WORDS}"   # clitics and the apostrophe words above
    rf"|[a-z]*[a-mo-z](?=n't)|[^\W\d_][^\W_]*(?={_REDAUX})"   # the word before a clitic ("do n't", "it 's")
    r"|y'(?=[^\W\d_])|[ldj]'"                                # y'all -> y' all, j'adore -> j' adore
    rf"|[a-z0-9][a-z0-9.,]*(?:-(?:[a-z0-9]+|[a-z](?:\.[a-z])+\.))+{_KEEP_PERIOD}"   # ASCII: "3.5-inch", "u.s.-made"
    r"|(?:ed|ph)\.d\.|(?-i:[A-Za-z]\.){2,}(?![^\W\d_])"    # ph.d., u.s., e.g. (ASCII letters, as in PTB)
    rf"|[^\W\d_][^\W_]*(?:[.!?][^\W\d_][^\W_]*)+{_KEEP_PERIOD}"   # no space after . ! ?: "bed.it", "hi!there"
    rf"|(?<![\w'.-])[a-z](?=\.\s+(?:{_SENTENCE_STARTS})(?!\S))"
    rf"|(?<![\w'.-])(?:(?:{_ABBREVIATIONS})|(?-i:{_CAPITALISED_ABBREVIATIONS}))\.(?!\w)"
    rf"|(?<![\w'.-])(?:{_NUMBER_ABBREVIATIONS})\.(?=\s*\d)"
    r"|(?<!-)(?:[-+]?\d+(?:[.:,]\d+)+|[-+]\d+|[-+]?(?<!\.\.)(?:[.:,]\d+)+)"   # "10:30", "-5", ".5"; "v1.2": "v1 .2"
    rf"|(?-i:S&P-500|S&Ls|[A-Z]+(?:&[A-Z]+)+){_KEEP_PERIOD}"   # capitals joined by & ("B&W", "AT&T"); "b&w" splits
    r"|&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#\d+);"               # entities PTB keeps as they are ("&#39;")
    r"|(?-i:[A-Z]+)\$"                                          # "US$"
    rf"|(?:[^\W_]|[{_MARKS}])+(?:[-/_\u2010\u2011](?:[^\W_]|[{_MARKS}])+)*{_KEEP_PERIOD}"   # words, inner hyphens
    r"|[!?]{2,}|@+|#+|_+|\*+"                                 # runs ("!" and "?" alone are dropped by the filter)
    r"|[^\w\s.,:;?!'\"`\u2010\u2011-]",                     # a symbol PTB keeps as a token (& % $ # @ + = brackets)
    re.I,
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PARENS = str.maketrans({"(": "-lrb-", ")": "-rrb-"})   # inside a smiley
# Characters read as PTB reads them: ’ as an apostrophe ("man’s" -> "man 's"), other quotes and dashes as its quote
# and dash tokens, which its filter drops; the currency signs and fractions it rewrites, as it rewrites them
# ("€5" -> "$ 5", "25¢" -> "25 cents", "½" -> "1/2"); other fractions, super- and subscript digits and circled
# numbers as tokens of their own ("m²" -> "m ²"); the HTML entities it decodes. A soft hyphen vanishes.
_TYPOGRAPHIC = str.maketrans({
    "‘": "'", "’": "'", "‛": "'", "\x91": "'", "\x92": "'", "“": '"', "”": '"', "«": '"', "»": '"', "‹": '"', "›": '"',
    "\x93": '"', "\x94": '"', "–": " - ", "—": " - ", "―": " - ", "\x96": " - ", "\x97": " - ", "…": " ... ",
    "¢": " cents ", "£": " # ", "€": " $ ", "¤": " $ ", "₠": " $ ", "\x80": " $ ", "\xad": "",
    "¼": " 1/4 ", "½": " 1/2 ", "¾": " 3/4 ", "⅓": " 1/3 ", "⅔": " 2/3 ",
})
_OWN_TOKEN = re.compile("[\u2155-\u215e\u2460-\u24ff\u2776-\u2793]"
                        "|[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)")
_ENTITY = re.compile("&(amp|lt|gt|quot|apos|nbsp|md|mdash|ndash);", re.I)
_ENTITIES = {"amp": "&", "lt": " < ", "gt": " > ", "quot": '"', "apos": "'", "nbsp": " ", "md": " - ", "mdash": " - ",
             "ndash": " - "}
# Characters the Java tokenizer cannot tokenize and deletes (they still separate tokens): every one outside the
# Basic Multilingual Plane (emoji among them), format and private-use characters, variation selectors, C1
# controls, and the punctuation, currency signs and number forms it does not know (checked character by
# character against it in the Latin, general punctuation, currency, number-form, CJK punctuation and
# half/full-width blocks; the punctuation of other scripts is not covered).
_PTB_DELETES = re.compile(
    "[\x7f\x81-\x84\x86-\x90\x95\x98-\x9f\u200b-\u200f\u2012\u2024\u2025\u2027-\u202e\u203c\u203d\u2043"
    "\u2045-\u205e\u2060-\u206f\u20a1-\u20a3\u20a5-\u20ab\u20ad-\u20c0\u2150-\u2152\u215f-\u2182\u2185-\u218b"
    "\u3003\u3004\u3007-\u3011\u3013-\u3030\u3036-\u303a\u303d-\u303f\ue000-\uf8ff\ufe00-\ufe6b\ufeff\uffe2-\uffe4"
    "\uffe8-\uffee\ufff9-\ufffd\U00010000-\U0010ffff]"
)


def tokenize_caption(text: str) -> str:
    """Lowercase and tokenise a caption as pycocoevalcap's PTB tokenizer does, punctuation tokens dropped.

    A pure-Python rendering of the Stanford PTB tokenizer (CoreNLP 3.4.1) that pycocoevalcap runs through
    Java (the rules are listed above; the tests compare with the Java tokenizer's output on captions that
    exercise each rule). What still differs is listed in docs/dependencies.md ("Captioning metrics without
    pycocoevalcap"). Returns the tokens joined by single spaces.
    """
    text = _ENTITY.sub(lambda m: _ENTITIES[m[1].lower()], text).translate(_TYPOGRAPHIC)
    text = _OWN_TOKEN.sub(r" \g<0> ", _PTB_DELETES.sub(" ", text))
    text = _ASSIMILATION.sub(r"\1 ", text)
    tokens = (t.lower() for t in _PTB_TOKEN.findall(text))
    return " ".join(_BRACKETS.get(tok) or (tok.translate(_PARENS) if tok[-1] in "()" else tok) for tok in tokens)


def caption_scores(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[str, float]:
    """Corpus CIDEr(-D) and BLEU-4 of generated captions, as pycocoevalcap's scorers compute them.

    ``predictions`` maps an image id to one generated caption; ``references`` maps each of those ids
    to its reference captions. Ids of ``references`` without a prediction are ignored; a prediction
    without references is an error. Both sides go through :func:`tokenize_caption`; the scores come
    from :mod:`mtl_lora_vl.caption_metrics` (pure Python; the tests check them against pycocoevalcap).
    """
    if not predictions:
        raise ValueError("caption_scores: no predictions given")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"caption_scores: {len(missing)} prediction id(s) have no references, e.g. "
                         f"{missing[:5]}; pass references for every predicted image")
    res: dict[Any, str] = {}
    gts: dict[Any, list[str]] = {}
    for key, pred in predictions.items():
        if not isinstance(pred, str):
            raise TypeError(f"caption_scores: prediction for {key!r} must be a str, got {type(pred).__name__}")
        refs = references[key]
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"caption_scores: references for {key!r} must be a list of str, got {refs!r}")
        if not any(r.strip() for r in refs):
            raise ValueError(f"caption_scores: image {key!r} has no non-empty reference caption")
        refs = [tokenize_caption(r) for r in refs]   # one that tokenises to nothing ("...") still counts, as there
        res[key] = tokenize_caption(pred)
        gts[key] = refs
    cider, _ = cider_d(gts, res)
    return {"cider": float(cider), "bleu4": float(bleu(gts, res, 4)[3])}


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------

def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy for each K, as ``{"top1": .., "top5": ..}``.

    A K larger than the number of classes is clipped to it (then every sample counts as correct). A class
    tied with the true one counts as ranked above it (constant logits score 0, not chance); NaN logits are an
    error, as in :func:`retrieval_recall`.
    """
    logits = _as_tensor(logits, "logits")
    labels = _as_index_tensor(labels, "labels", "topk_accuracy").to(logits.device)
    if logits.ndim != 2:
        raise ValueError(f"topk_accuracy: logits must be (n_samples, n_classes), got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"topk_accuracy: labels must be 1-D with {logits.shape[0]} entries, got shape "
                         f"{tuple(labels.shape)}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("topk_accuracy: no samples")
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        raise ValueError(f"topk_accuracy: labels must lie in [0, {c - 1}], got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"topk_accuracy: ks must be positive, got {ks}")
    scores = logits.float()
    if torch.isnan(scores).any():
        raise ValueError("topk_accuracy: logits contain NaN (an overflow in half precision?); nothing can be ranked")
    true = scores.gather(1, labels[:, None])
    rank = (scores >= true).sum(1)  # classes scoring at least the true one, itself included: ties count against
    return {f"top{k}": float((rank <= min(k, c)).double().mean()) for k in ks}


def per_class_accuracy(pred: Any, labels: Any, num_classes: int) -> list[float]:
    """Accuracy within each true class; ``nan`` for a class with no samples (use ``nanmean`` to average)."""
    pred = _as_index_tensor(pred, "pred", "per_class_accuracy").flatten()
    labels = _as_index_tensor(labels, "labels", "per_class_accuracy").flatten().to(pred.device)
    if pred.shape != labels.shape:
        raise ValueError(f"per_class_accuracy: pred has {pred.numel()} entries but labels has {labels.numel()}")
    if num_classes < 1:
        raise ValueError(f"per_class_accuracy: num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"per_class_accuracy: labels must lie in [0, {num_classes - 1}]")
    total = torch.bincount(labels, minlength=num_classes).float()
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    return [float(c / t) if t > 0 else math.nan for c, t in zip(correct.tolist(), total.tolist())]
