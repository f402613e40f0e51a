"""Caption tokens as pycocoevalcap's PTB tokenizer leaves them: :func:`tokenize_caption`, a pure-Python rendering of
the Stanford PTB tokenizer (CoreNLP 3.4.1) that pycocoevalcap runs through Java, so that CIDEr and BLEU
(:func:`mtl_lora_vl.metrics.caption_scores`) need no Java. What still differs: docs/dependencies.md."""

from __future__ import annotations

import itertools
import re
import unicodedata

__all__ = ["tokenize_caption"]

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
# PTB's ABBREV1 ({ABBREV1}/[^][^]: two more characters count in its longest match, so its period stays unless a word
# of two or more characters follows it, "Feb.A x" is "feb. a x", "Feb.Ab" one word) and ABBREV2 ({ABBREV4}\., no such
# context: a word, any letter, after its period takes it, "Mr.A" is one word); either keeps it before a digit ("mr. 5")
_ABBREVIATIONS = (
    "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri"        # months, days
    "|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt"
    "|wisc?|wyo"                                                                          # states
    "|jr|sr|bros|blvd|rd|esq|bldg"                                                        # addresses
    "|inc|cos?|corp|p?pt(?-i:[ye])s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|etc|al|seq"
)
_CAPITALISED_ABBREVIATIONS = "A(?i:rk|z)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
_TITLE_ABBREVIATIONS = (
    "mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave"
    "|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc"   # titles
    "|dept|invt|elec|natl|m(?-i:[ft])g|ph|ft|vs|alex|wm|jos|cie|cf|treas|(?-i:[A-Za-z])"  # and an ASCII letter
)
_NUMBER_ABBREVIATIONS = "nos?|prop|figs?|pp|op|ca|art"   # kept only before a number ("no. 5"; "says no." is "no")
# PTB's SPACENL, one of which may stand between such an abbreviation and its number ("no.  5" is "no 5")
_SPACENL = "[ \t\xa0\u2000-\u200a\u3000\r\n\u2028\u2029\x0b\x0c\x85]"
# A single letter's period goes when a capitalised word of this list follows it, as PTB reads it as a sentence end
# ("plan B. The dog" is "plan b the dog"; "plan B. the dog" keeps "b.").
_SENTENCE_STARTS = "|".join(f"(?-i:{w[0]}){re.escape(w[1:])}" for w in (
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr. Ms. Now"
    " Once One Other Our She Since So Some Such That The Their Then There These They This We When While What Yet You"
).split())
# Apostrophe words PTB keeps whole (its APOWORD and THING rules); any other apostrophe inside a word splits it and
# is dropped ("6'2" -> "6 2", "gov't" -> "gov t", "y'all" -> "y' all"). A clitic ('s 're 've 'll 'd 'm) or n't
# always splits off the word before it; it is a token of its own unless a letter follows ("it'sa" -> "it sa").
_APOS = "['\u2019\x92]"                 # PTB's APOS; APOSETCETERA (in a word) adds ` \u2018 \u201b \x91
_APOSX = "['\u2019\x92`\u2018\u201b\x91]"
_REDAUX = f"{_APOS}(?:[sdm]|re|ve|ll)"
_NOT_REDAUX = r"(?!(?:[sdm]|re|ve|ll)(?![\w-]))"   # where the clitic rule ties with a longer one, the clitic wins
_APOSTROPHE_WORDS = (
    r"cont'd\.|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|cap'n|c'est"
    rf"|(?-i:O){_APOSX}o"
    rf"|(?:dunkin|somethin|ol){_APOS}{_NOT_REDAUX}"
    rf"|[dol]{_APOSX}{_NOT_REDAUX}[^\W_]{{2,}}(?:[-_](?:[dol]{_APOSX})?[^\W_]+)*"       # o'clock, d'oh, l'oreal, o'neil
    rf"|(?-i:[A-HJ-XZn]){_APOSX}{_NOT_REDAUX}[^\W\d_]{{2,}}"                    # O'Neil, B'nai, n'ts ("do n'ts")
    rf"|[^\W\d_]+(?-i:[aeiouyAEIOUY]){_APOSX}{_NOT_REDAUX}(?-i:[aeiouA-Z])[^\W\d_]*"   # ne'er, Hawai'i
    rf"|{_APOS}(?:em|till?|cause|[2-9]0s|n{_APOS})|'n(?![a-z])|[\u2019\x92]n|'t(?=is|was)|{_APOS}\d\d(?!\S)"
)
# Combining marks stay inside their word, as in PTB ("e\u0301", Devanagari and Thai vowel signs); \w lacks them.
# The marks in these ranges PTB's LETTER lacks and Java deletes, in a word and alone ("x\u20dd" is "x"; checked mark by
# mark against the jar, U+0614 aside: a token of its own there); no rule here takes them but a URL's, as in PTB.
_DELETED_MARK_RANGES = ((0x488, 0x489), (0x610, 0x613), (0x65f, 0x65f), (0x7fd, 0x8ff), (0x93a, 0x93b), (0x94f, 0x94f),
                        (0x956, 0x957), (0x9fe, 0x9fe), (0xa51, 0xa75), (0xae2, 0xb63), (0xbd7, 0xc00), (0xc04, 0xc3c),
                        (0xc62, 0xd3c), (0xd4a, 0xdf3), (0xf18, 0x180f), (0x18a9, 0xfe2f))
_ALL_MARK_CODES = [c for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M"]
_DELETED_MARK_CODES = [c for c in _ALL_MARK_CODES if any(lo <= c <= hi for lo, hi in _DELETED_MARK_RANGES)]
_MARK_CODES = sorted(set(_ALL_MARK_CODES) - set(_DELETED_MARK_CODES))


def _ranges(codes: list) -> str:
    """Code points, ascending, as a character class's ranges of consecutive ones."""
    return "".join(f"{chr(run[0][1])}-{chr(run[-1][1])}" for run in (
        list(r) for _, r in itertools.groupby(enumerate(codes), key=lambda p: p[1] - p[0])))


_MARKS = _ranges(_MARK_CODES)
# PTB's LETTER holds the combining marks: a mark after a period ("Mr.\u0301", "U.S.\u0301") goes on a WORD.
_LETTER = rf"(?:[^\W\d_]|[{_MARKS}])"
_ALNUM = rf"(?:[^\W_]|[{_MARKS}])"
_ALNUMS = rf"[^\W_]*(?:[{_MARKS}][^\W_]*)*"   # {_ALNUM}* unrolled, for speed
# An ABBREV1 period stays unless the letter after it starts a longer PTB WORD: a letter, digit or mark goes on,
# [.!?] and a letter, a clitic ({WORD}/{REDAUX}) or ".," ({WORD}\./{INSENTP}) follows it
_ABBREVIATION_KEPT = rf"(?!{_LETTER}(?:{_ALNUM}|[.!?][^\W\d_]|{_REDAUX}|\.[,;:\u3001]))"
# Whole words: a hyphen joins one only to a letter or digit beyond it ("wanna-be" stays; "gonna-", "--cannot" split).
# A token rule, after the rules of longer tokens, as in PTB's longest match: "bed.cannot", "cannot/x" and "gonna's"
# (the word before a clitic) stay whole; "1,000cannot" splits.
_WORD_END = r"(?!\w|-[^\W_])"
_ASSIMILATION = (rf"(?<![^\W_]-)(?:can(?=not{_WORD_END})|gon(?=na{_WORD_END})|got(?=ta{_WORD_END})"
                 rf"|wan(?=na{_WORD_END})|lem(?=me{_WORD_END})|gim(?=me{_WORD_END}))")
# Web and chat tokens PTB keeps whole: SGML tags, URLs (its FULLURL and LIKELYURL), e-mail addresses, @names,
# #hashtags, smileys (its parentheses spelled -lrb- -rrb-).
_SGML = (r"<(?:[!?][a-z-][^>\r\n]*|/[a-z][a-z0-9_:.-]*"
         r"|[a-z][a-z0-9_:.-]*(?: +[a-z][a-z0-9_:.-]*(?: *= *(?:'[^']*'|\"[^\"]*\"))?)* */?) *>")
# PTB's URL rules stop only at " \t\n\f\r" (here also at the line breaks, and \x1f, a deleted character): a no-break or
# other Unicode space is inside a URL ("with\xa0x.com" is one token), though none starts one
_URL_SPACE = r"\t-\r \x1c-\x1f\x85\u2028\u2029"
_URL_HOST = rf"[^{_URL_SPACE}\"`'\u2018\u2019\u201b\x91\x92<>|.!?(){{}}$\x2c-\x5f]"
_URL = (
    rf"https?://[^{_URL_SPACE}\"<>|(){{}}]+[^{_URL_SPACE}\"<>|.!?(){{}},-]"
    rf"|(?:www\.(?:[^{_URL_SPACE}\"<>|.!?(){{}},]+\.)+[a-z]{{2,4}}"
    rf"|(?-i:(?!\s){_URL_HOST}+\.(?:{_URL_HOST}+\.)*)(?:com|net|org|edu))"
    rf"(?:/[^{_URL_SPACE}\"<>|()]+[^{_URL_SPACE}\"<>|.!?(){{}},-])?"
)
_EMAIL_AND_CHAT = (
    r"(?:<|&lt;)?[a-z0-9][^\s\"<>|(){}]*@(?:[^\s\"<>|(){}.]+\.)*[^\s\"<>|(){}.]+>?"
    rf"|c\+\+|[cf]#|@[a-z_][a-z_0-9]*|#(?:[^\W\d_]|[{_MARKS}])+"
    r"|(?-i:[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]])(?![a-z0-9])"
    r"|(?-i:[-^=~<>']_[-^=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\))"   # ^_^ (^_^) (-.-)
)
_KEEP_PERIOD = r"(?:\.(?=[,;:\u3001]))?"   # a word keeps a period that a comma, semicolon or colon follows
_ASCII_HYPHENS = r"(?:-(?:[a-z0-9]+|[a-z](?:\.[a-z])+\.))+"
_TOKEN_RULES = (
    rf"''|[`\u2018\u2019\u201b\x91\x92]{{2}}|n{_APOSX}t(?![a-z])|'(?:[sdm]|re|ve|ll)(?![a-z])"
    rf"|[\u2019\x92](?:[sdm]|re|ve|ll)|{_APOSTROPHE_WORDS}"   # '' (a quote token), clitics, the words above
    # PTB's PHONE with brackets ("(555) 123-4567" is "-lrb-555-rrb- 123-4567") and FRAC with a whole number ("3 1/2in"
    # is "3 1/2 in", "3-1/2" whole): longer than the number or slash word that starts there
    r"|\([0-9]{2,3}\)[ \xa0]?[0-9]{3,4}[- \xa0]?[0-9]{3,5}|\d{1,4}[- \xa0]\d{1,4}(?:\\?/|\u2044)\d{1,4}"
    rf"|[a-z]*[a-mo-z](?=n{_APOSX}t)|[^\W\d_][^\W_]*(?={_REDAUX})"   # the word before a clitic ("do n't", "it 's")
    rf"|y{_APOS}(?=[^\W\d_])|[ldj]{_APOS}"                                # y'all -> y' all, j'adore -> j' adore
    # ASCII words joined by one or two slashes, each with up to two hyphens (PTB's THING3): "t-shirt/jeans" whole,
    # "a/b/c/d" is "a/b/c / d", "bed/café" is "bed/caf é"; the word rule below joins no slash ("café/bar" splits)
    r"|(?-i:[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2})"   # (ASCII: not ı, ſ, K)
    # ASCII hyphenated words: with [.,] ("3.5-inch", "u.s.-made"; "3.5-café" is "3.5-caf é" in PTB), or without them
    # where no other letter goes on (PTB's longest match: "pan-sautéed", "2-año" stay whole, in the word rule below)
    rf"|[a-z0-9]+[.,][a-z0-9.,]*{_ASCII_HYPHENS}{_KEEP_PERIOD}"
    rf"|[a-z0-9]+{_ASCII_HYPHENS}(?!-?(?:[^\W_]|[{_MARKS}])){_KEEP_PERIOD}"
    rf"|(?:ed|ph)\.d\.{_ABBREVIATION_KEPT}|(?-i:[A-Za-z]\.){{2,}}(?!{_LETTER})"   # ph.d., u.s., e.g. (ASCII, as PTB)
    # abbreviations start a token wherever the last one ended: after "..." and "--", a number ("10:30al." is
    # "10:30 al.", "3 1/2Mr." is "3 1/2 mr."), a curly "’n" ("’No." is "’n o."); (?=[a-z]) only for speed
    rf"|(?=[a-z])(?:(?:{_ABBREVIATIONS})|(?-i:{_CAPITALISED_ABBREVIATIONS}))\.{_ABBREVIATION_KEPT}"
    # no space after . ! ?: "bed.it", "hi!there" (the lookahead only for speed)
    rf"|(?=[^\W_]*[.!?{_MARKS}]){_LETTER}{_ALNUMS}(?:[.!?]{_LETTER}{_ALNUMS})+{_KEEP_PERIOD}"
    rf"|[a-z](?=\.{_SPACENL}+(?:{_SENTENCE_STARTS})(?!\S))"
    rf"|(?=[a-z])(?:{_TITLE_ABBREVIATIONS})\.(?![^\W\d_])"
    rf"|(?=[a-z])(?:{_NUMBER_ABBREVIATIONS})\.(?={_SPACENL}?\d)"
    r"|(?<!-)(?:[-+]?\d+(?:[.:,]\d+)+|[-+]\d+|[-+]?(?<!\.\.)(?:[.:,]\d+)+)"   # "10:30", "-5", ".5"; "v1.2": "v1 .2"
    rf"|(?-i:S&P-500|S&Ls|[A-Z]+(?:&[A-Z]+)+){_KEEP_PERIOD}"   # capitals joined by & ("B&W", "AT&T"); "b&w" splits
    r"|&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#\d+);|&[lg]t;"       # entities PTB keeps as they are ("&#39;"), "&lt;"
    r"|(?-i:[A-Z]+)\$"                                          # "US$"
    rf"|{_ASSIMILATION}"                                        # "can not", "gon na"
    rf"|(?:[^\W_]|[{_MARKS}])+(?:[-_\u2010\u2011](?:[^\W_]|[{_MARKS}])+)*{_KEEP_PERIOD}"   # words, inner hyphens
    r"|[!?]{2,}|@+|#+|_+|\*+|<<|>>"                           # runs ("!" and "?" alone are dropped by the filter)
    # a symbol PTB keeps as a token (& % $ # @ + = brackets)
    rf"|[^\w\s.,:;?!'\"`\u2010\u2011\u2018\u2019\u201b\x91\x92{_ranges(_DELETED_MARK_CODES)}-]"
)
_PTB_TOKEN = re.compile(rf"{_SGML}|{_URL}|{_EMAIL_AND_CHAT}|{_TOKEN_RULES}", re.I)
# PTB takes the longest match of all its rules, and a URL is not always it: a word goes on past a URL's ending
# ("www.x.comdog", "a.orgs" are one WORD), an e-mail address past its host ("a.org@b"), a word keeps its period
# before a comma ("x.com.,"). Where such a token is longer it is taken, from the rules without the URL.
_URL_TOKEN = re.compile(_URL, re.I)
_NON_URL_TOKEN = re.compile(rf"{_SGML}|{_EMAIL_AND_CHAT}|{_TOKEN_RULES}", re.I)
_URL_HINT = re.compile(r"://|www\.|\.(?:com|net|org|edu)", re.I)   # no URL rule matches a text without one
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PARENS = str.maketrans({"(": "-lrb-", ")": "-rrb-", "\xa0": " "})   # inside a smiley or a phone number
# Characters read as PTB reads them (single quotes stay: the rules above take ’ \x92 as PTB's APOS, "‘" "`" "‛" \x91 in
# a word as its APOSETCETERA; "man’s" -> "man 's", "o’clock" as written): double quotes and dashes as its quote
# and dash tokens, which its filter drops; the currency signs and fractions it rewrites, as it rewrites them
# ("€5" -> "$ 5", "25¢" -> "25 cents", "½" -> "1/2"); other fractions, super- and subscript digits and circled
# numbers as tokens of their own ("m²" -> "m ²"); the HTML entities it decodes. A soft hyphen vanishes.
_TYPOGRAPHIC = str.maketrans({
    "“": '"', "”": '"', "«": '"', "»": '"', "‹": '"', "›": '"',
    "\x93": '"', "\x94": '"', "–": " - ", "—": " - ", "―": " - ", "\x96": " - ", "\x97": " - ", "…": " ... ",
    "¢": " cents ", "£": " # ", "€": " $ ", "¤": " $ ", "₠": " $ ", "\x80": " $ ", "\xad": "",
    "¼": " 1/4 ", "½": " 1/2 ", "¾": " 3/4 ", "⅓": " 1/3 ", "⅔": " 2/3 ",
})
_OWN_TOKEN = re.compile("[\u2155-\u215e\u2460-\u24ff\u2776-\u2793]"
                        "|[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)")
# ("&lt;" and "&gt;" are read by the rules: an e-mail address keeps them, "&lt;a@b.com&gt;", elsewhere "<" and ">")
_ENTITY = re.compile("&(amp|quot|apos|nbsp|md|mdash|ndash);", re.I)
_ENTITIES = {"amp": "&", "quot": '"', "apos": "'", "nbsp": " ", "md": " - ", "mdash": " - ",
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


# PTB's {QUOTES} takes two quote characters as one token and rewrites each as LaTeX quotes (latexQuotes): "``" and
# "''" are dropped by pycocoevalcap's filter, any other pair ("““" -> "````", "“”" -> "``''") stays a
# token. A right single quote that ends one of PTB's apostrophe words (APOWORD: "l’", "ol’", "’n’")
# is not the start of a pair.
_QUOTE_PAIR = re.compile("(?<![\\w'\u2019\x92])(?:[ldj]|ol|dunkin|somethin|['\u2019\x92]n)[\u2019\x92]"
                         "|([`\u2018\u2019\u201a-\u201f\x91-\x94\u2039\u203a\xab\xbb]{2})", re.I)
# PTB's {QUOTES} tokens "''" and two single quotes that latexQuotes makes "``" or "''", which pycocoevalcap drops
_DROPPED_QUOTES = frozenset(["''", *(a + b for a in "`\u2018\u201b\x91" for b in "`\u2018\u201b\x91"),
                             *(a + b for a in "\u2019\x92" for b in "\u2019\x92")])
_LATEX_QUOTES = str.maketrans({"\u2018": "`", "\u201b": "`", "\x91": "`", "\u2039": "`", "\u2019": "'", "\x92": "'",
                               "\u203a": "'", "\u201c": "``", "\x93": "``", "\xab": "``", "\u201d": "''", "\x94": "''",
                               "\xbb": "''"})
# Tokens PTB spells otherwise: brackets, a clitic with LaTeX quotes ("’s" -> "'s", "n‘t" -> "n`t"; its other apostrophe
# words stay as written)
_SPELLED = {**_BRACKETS, "&lt;": "<", "&gt;": ">", **{clitic: clitic.translate(_LATEX_QUOTES) for clitic in (
    *(a + c for a in "'\u2019\x92" for c in ("s", "d", "m", "re", "ve", "ll")), *(f"n{a}t" for a in _APOSX[1:-1]))}}


def tokenize_caption(text: str) -> str:
    """Lowercase and tokenise a caption as pycocoevalcap's PTB tokenizer does, punctuation tokens dropped.

    A pure-Python rendering of the Stanford PTB tokenizer (CoreNLP 3.4.1) that pycocoevalcap runs through
    Java (the rules are listed above; the tests compare with the Java tokenizer's output on captions that
    exercise each rule). What still differs is listed in docs/dependencies.md ("Captioning metrics without
    pycocoevalcap"). Returns the tokens joined by single spaces.
    """
    text = _ENTITY.sub(lambda m: _ENTITIES[m[1].lower()], text)
    pieces, start, before = [], 0, ""
    for m in _QUOTE_PAIR.finditer(text):
        if m[1] and (quotes := m[1].translate(_LATEX_QUOTES)) not in ("``", "''"):
            # a '"' on each side keeps the context the rules see as it was (a quote, read as '"')
            pieces += [_tokens(before + text[start:m.start()] + '"'), quotes]
            start, before = m.end(), '"'
    return " ".join(p for p in [*pieces, _tokens(before + text[start:])] if p)


def _tokens(text: str) -> str:
    """:func:`tokenize_caption` of a text without PTB's kept quote pairs, its entities decoded."""
    # a deleted character still ends a token but is no PTB space ({SPACENL}): \x1f, which \s matches ("No.\u200b5"
    # loses its period, as "No." keeps it only with a SPACENL or nothing before the number)
    text = _OWN_TOKEN.sub(r" \g<0> ", _PTB_DELETES.sub("\x1f", text.translate(_TYPOGRAPHIC)))
    tokens = (t.lower() for t in (_longest_tokens(text) if _URL_HINT.search(text) else _PTB_TOKEN.findall(text)))
    # brackets spelled as PTB spells them (also in a smiley, in a phone number: "(555) 123-4567" is "-lrb-555-rrb-
    # 123-4567", its no-break space a space), a clitic's quotes as LaTeX quotes; PTB's quote tokens dropped as
    # pycocoevalcap drops them
    return " ".join(_SPELLED.get(tok) or (
        tok.translate(_PARENS) if tok[-1] in "()" or tok[0] == "(" or "\xa0" in tok
        else tok)
        for tok in tokens if tok not in _DROPPED_QUOTES)


def _longest_tokens(text: str) -> list:
    """``_PTB_TOKEN.findall(text)``, but a URL gives way to a longer token of PTB's other rules starting there."""
    tokens, pos = [], 0
    while m := _PTB_TOKEN.search(text, pos):
        if (url := _URL_TOKEN.match(text, m.start())) and url.end() == m.end():
            other = _NON_URL_TOKEN.match(text, m.start())
            m = other if other and other.end() > m.end() else m
        tokens.append(m[0])
        pos = m.end()
    return tokens
