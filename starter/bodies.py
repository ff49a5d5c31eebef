"""Request bodies as JSON: every way the parser can refuse one is the caller's mistake.

`json.loads` raises ValueError (bad syntax, bad UTF-8, an integer of more than 4300
digits) and RecursionError (nesting deeper than the interpreter's stack); all of them
become InvalidBody, which the routes answer with 400. Bodies nested deeper than
MAX_DEPTH are refused before anything walks them (pydantic, the payload converter).
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # Git hosts' payloads are under 10 levels deep


class InvalidBody(ValueError):
    pass


def depth(value: Any) -> int:
    """How deeply lists and objects nest, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(raw: bytes | str) -> Any:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidBody(f"body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise InvalidBody(f"body is not valid JSON: {error}") from None
    if depth(value) > MAX_DEPTH:
        raise InvalidBody(f"body is nested too deeply (at most {MAX_DEPTH} levels)")
    return value
