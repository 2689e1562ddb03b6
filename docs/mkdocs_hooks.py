"""mkdocs hooks (mkdocs.yml ``hooks:``) for the documentation site.

The pages in docs/ are read on the repository's web view as well as on the built site. On the
web view a link such as ``[examples/game](../examples/game)`` opens the example's folder; on
the site there is nothing at that address. This hook rewrites links that point **outside
docs/ to a file or folder that exists in the repository** into the repository path as code
(`` `examples/game` ``), so the site never has a dead link and the reader still knows where
to look. A link to a path that does not exist is left alone, so ``mkdocs build --strict``
still reports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# [text](target) or [text](target#anchor), not images, not absolute URLs.
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
_FENCE = re.compile(r"^(```|~~~)")


def _repo_path(page_src: str, target: str, docs_dir: Path, root: Path) -> str | None:
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    resolved = (docs_dir / page_src).parent.joinpath(target).resolve()
    try:
        resolved.relative_to(docs_dir)
        return None  # inside docs/: mkdocs checks it
    except ValueError:
        pass
    try:
        rel = resolved.relative_to(root)
    except ValueError:
        return None
    if not resolved.exists():
        return None  # left as is: mkdocs reports it
    return rel.as_posix() + ("/" if resolved.is_dir() else "")


def rewrite_links(markdown: str, page_src: str, docs_dir: Path) -> str:
    """``markdown`` with links to repository files outside ``docs_dir`` turned into code."""
    root = docs_dir.parent
    out = []
    in_fence = False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
        if in_fence or "](" not in line:
            out.append(line)
            continue

        def repl(match: re.Match[str]) -> str:
            path = _repo_path(page_src, match["target"], docs_dir, root)
            if path is None:
                return match[0]
            text = match["text"].strip()
            if text.strip("`").rstrip("/") == path.rstrip("/"):
                return f"`{path}`"
            return f"{text} (`{path}`)"

        out.append(_LINK.sub(repl, line))
    return "".join(out)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    return rewrite_links(markdown, page.file.src_uri, Path(config["docs_dir"]).resolve())
