"""The Go modules of ours that become images (examples/demo, stack/go/pause) are gofmt'd,
pass `go vet`, keep go.mod and go.sum tidy, and pass their own tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stack import images

MODULES = [images.DEMO_DIR, images.PAUSE_DIR]


def go(module: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["go", *args], cwd=module, capture_output=True, text=True,
                          env={**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
                          stdin=subprocess.DEVNULL, timeout=600)


@pytest.fixture(autouse=True)
def needs_go() -> None:
    if shutil.which("go") is None:
        pytest.skip("no `go` here")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_module_is_formatted_vetted_and_tested(module: Path) -> None:
    unformatted = subprocess.run(["gofmt", "-l", "."], cwd=module, capture_output=True,
                                 text=True, check=True).stdout.split()
    assert unformatted == [], f"not gofmt'd: {unformatted}"
    vet = go(module, "vet", "./...")
    assert vet.returncode == 0, vet.stderr
    tested = go(module, "test", "-count=1", "./...")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_go_mod_and_go_sum_are_tidy(module: Path) -> None:
    """`go mod tidy -diff` prints what tidying would change, and exits 1 if anything."""
    tidy = go(module, "mod", "tidy", "-diff")
    assert tidy.returncode == 0, tidy.stdout + tidy.stderr
