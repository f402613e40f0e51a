"""Every flag README.md and docs/*.md give one of the scripts with a parser of its own (``scripts/bench_adapters.py
--case llava``, ``check_gpu.py --only ...``) is a flag that script defines; ``tests/test_docs_flags.py`` holds the
package's commands (train, eval, export, bench) to theirs and leaves these out.

A script's flags are read from its source (its ``add_argument("--flag", ...)`` calls), so no script is imported or run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_docs_flags import DOCS, NAMES, command_lines

ROOT = Path(__file__).resolve().parent.parent
#: The scripts the package's commands are not: name -> the flags its parser defines.
SCRIPTS = {p.name: set(re.findall(r"""["'](--[a-z][\w-]*)["']""", "\n".join(
               re.findall(r"add_argument\(([^)]*)", p.read_text(encoding="utf-8")))))
           for p in sorted((ROOT / "scripts").glob("*.py")) if p.name not in NAMES}


def problems(text: str, where: str) -> list[str]:
    """What ``text`` says of a script's flags that the script's parser does not define."""
    out, script, continued = [], None, False
    for number, line in command_lines(text):
        script = script if continued else None   # (a line that ends in a backslash goes on in the next)
        continued = line.rstrip().endswith("\\")
        for token in line.split():
            if token.startswith("#"):
                break
            name = token.rsplit("/", 1)[-1]
            if name.endswith(".py") or name in NAMES:   # another command: its flags are its own (or another test's)
                script = name if name in SCRIPTS else None
                continue
            flag = token.partition("=")[0].rstrip(".,;:)")
            if script is not None and re.fullmatch(r"--[a-z][\w-]*", flag) and flag not in SCRIPTS[script]:
                out.append(f"{where}:{number}: {script} has no {flag}: {line.strip()}")
    return out


def test_the_scripts_flags_are_read_from_their_parsers():
    assert {"--case", "--vision-width", "--json", "--profile", "--compile"} <= SCRIPTS["bench_adapters.py"]
    assert "--only" in SCRIPTS["check_gpu.py"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_flags_the_docs_give_a_script_are_its_own(path):
    found = problems(path.read_text(encoding="utf-8"), path.name)
    assert not found, "\n".join(found)


def test_the_check_sees_a_wrong_script_flag():
    text = ("Run `python scripts/bench_adapters.py --case llava --vision-widht 64`\n\n"
            "    check_gpu.py --only checks --repeats 3   # --anything here\n\n"
            "`train_vl.py --repeats 3` and `bench_adapters.py --json bench.json`.\n\n"
            "    bench_adapters.py --case llava \\\n        --repeats 3 --steps 2\n    --steps 2")
    assert problems(text, "t") == [
        "t:1: bench_adapters.py has no --vision-widht: python scripts/bench_adapters.py --case llava --vision-widht 64",
        "t:3: check_gpu.py has no --repeats: check_gpu.py --only checks --repeats 3   # --anything here",
        "t:8: bench_adapters.py has no --steps: --repeats 3 --steps 2",
    ]
