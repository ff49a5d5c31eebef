"""Source environments from blueprint files (`preview.yaml`), for setups without a store.

The store (the store/ package) is the normal source; a folder of blueprint files lets
a repository keep its preview definition next to its code, and runs the local stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain.blueprint import Blueprint
from domain.contract import LIST_SWEEP_TARGETS, LOAD_SOURCE_ENVIRONMENT
from domain.plan import sweep_targets
from domain.resources import SweepTargets
from domain.source import LoadSourceRequest, SourceEnvironment


class BlueprintFileActivities:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _documents(self) -> Iterator[tuple[Path, dict[str, Any] | None]]:
        """Each file with its mapping; None for one that is not readable YAML."""
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                yield path, None
                continue
            if isinstance(data, dict):
                yield path, data

    @staticmethod
    def _validate(path: Path, data: dict[str, Any]) -> Blueprint:
        try:
            return Blueprint.model_validate(data)
        except ValueError as error:
            raise ApplicationError(
                f"{path}: invalid blueprint: {error}", type="InvalidInput", non_retryable=True,
            ) from None

    def _find(self, repository: str) -> Blueprint | None:
        for path, data in self._documents():
            if data is None:
                continue  # unreadable: cannot be this repository's (others may be)
            repo = str((data.get("project") or {}).get("repository", ""))
            if repo.lower() == repository.lower():
                return self._validate(path, data)
        return None

    @activity.defn(name=LIST_SWEEP_TARGETS.name)
    async def list_sweep_targets(self) -> SweepTargets:
        environments, skipped, repositories = [], [], []
        for path, data in self._documents():
            try:
                if data is None:
                    raise ApplicationError(f"{path}: not readable YAML")
                blueprint = self._validate(path, data)
                environments.append(blueprint.environment)
                repositories.append(blueprint.project.repository)
            except ApplicationError:
                skipped.append(f"{path.name}: not a valid blueprint")  # the rest still count
        return sweep_targets(environments).model_copy(update={
            "skipped": skipped, "repositories": repositories})

    @activity.defn(name=LOAD_SOURCE_ENVIRONMENT.name)
    async def load_source_environment(self, request: LoadSourceRequest) -> SourceEnvironment:
        blueprint = self._find(request.repository)
        if blueprint is None:
            raise ApplicationError(
                f"no blueprint for repository {request.repository} in {self.directory}; "
                "add a preview.yaml with project.repository set to it",
                type="UnknownRepository", non_retryable=True,
            )
        return SourceEnvironment(blueprint=blueprint)
