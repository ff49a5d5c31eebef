"""The engine's image (Dockerfile) carries what its worker runs: the helm that renders
blueprints' charts is the version the tests render them with."""

from __future__ import annotations

from pathlib import Path

from stack.helm import HELM_MODULE, HELM_VERSION

DOCKERFILE = Path(__file__).parents[2] / "Dockerfile"


def test_the_image_builds_the_helm_the_tests_use() -> None:
    text = DOCKERFILE.read_text()
    assert f"go install {HELM_MODULE}/cmd/helm@{HELM_VERSION}" in text
    assert "COPY --from=helm /out/helm /usr/local/bin/helm" in text
