from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.workflows.harness import BLUEPRINT


@pytest.fixture
def blueprint_dir(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    return tmp_path
