"""The README's promises that code can check."""

from __future__ import annotations

import re
from pathlib import Path

from engine.settings import markdown_table

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_matches_the_settings_model() -> None:
    block = re.search(r"<!-- settings-table:start -->\n(.*)\n<!-- settings-table:end -->",
                      README, re.S)
    assert block, "README lost its settings table markers"
    assert block.group(1) == markdown_table(), (
        "README's table is stale: regenerate with `python -m stack.readme`")


def test_the_two_commands_come_first_and_exist() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
