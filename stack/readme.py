"""Regenerate the README's configuration table from the settings model."""

from __future__ import annotations

import re
from pathlib import Path

from engine.settings import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    text = README.read_text()
    table = markdown_table()
    README.write_text(re.sub(
        r"(<!-- settings-table:start -->\n).*(\n<!-- settings-table:end -->)",
        lambda m: m.group(1) + table + m.group(2), text, flags=re.S))


if __name__ == "__main__":
    main()
