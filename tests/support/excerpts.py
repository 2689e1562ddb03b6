"""Code shown in the documentation is code that runs: every fenced block whose first line
names a file (``# app.py``, ``// static/app.js``, ``<!-- static/index.html -->``) must be an
excerpt of that file. ``# ...`` (or ``// ...``) lines elide; excerpts of indented code may be
shown dedented."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_NAMED = re.compile(r"(?:#|//|<!--) ([\w/.-]+)(?: -->)?")
_ELIDE = re.compile(r"^\s*(?:#|//) \.\.\.\n", re.M)


def blocks(page: Path, lang: str) -> list[tuple[str, str]]:
    """(file name, code) of each ```lang block of ``page`` whose first line names a file."""
    found = []
    for code in re.findall(rf"^```{lang}\n(.*?)^```", page.read_text(), re.M | re.S):
        first, _, rest = code.partition("\n")
        if m := _NAMED.fullmatch(first.strip()):
            found.append((m.group(1), rest))
    return found


def _levels(source: str) -> str:
    # Excerpts of methods are shown dedented: compare against each indentation level.
    variants = [source]
    for n in (4, 8):
        variants.append("\n".join(line[n:] if line[:n].isspace() else line
                                  for line in source.splitlines()))
    return "\n\n".join(variants)


def check_excerpts(page: str, lang: str, files: dict[str, Path]) -> int:
    """Check the ``lang`` blocks of ``docs/<page>`` against ``files`` (shown name -> file);
    returns how many blocks were checked (at least one)."""
    shown = blocks(ROOT / "docs" / page, lang)
    assert shown, f"no {lang} blocks naming a file in docs/{page}"
    for name, code in shown:
        assert name in files, f"docs/{page} shows {name}, which no test knows"
        source = _levels(files[name].read_text())
        for part in _ELIDE.split(code):
            part = textwrap.dedent(part).strip("\n")
            assert part, f"an empty excerpt of {name} in docs/{page}"
            assert part in source, f"docs/{page} shows code that is not in {files[name]}:\n{part}"
    return len(shown)
