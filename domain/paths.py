"""Which changed files a glob matches, the way .gitignore-style path filters read.

`*` and `?` stay within one path component, `**` spans any number of them, a pattern
without a slash matches a file name at any depth (`*.md`), and a pattern ending in `/`
matches everything under that folder (`docs/`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache


@lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    glob = pattern.strip().lstrip("/")
    if glob.endswith("/"):
        glob += "**"
    if "/" not in glob.rstrip("/"):
        glob = "**/" + glob  # a bare name matches at any depth
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, patterns: Sequence[str]) -> bool:
    return any(_compile(p).match(path.lstrip("/")) for p in patterns)


def touched(changed: Iterable[str], paths: Sequence[str],
            ignore: Sequence[str] = ()) -> list[str]:
    """The changed files that count: under `paths` (all, when empty), not ignored."""
    return [f for f in changed
            if not matches(f, ignore) and (not paths or matches(f, paths))]
