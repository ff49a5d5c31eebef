"""What the engine loads before planning a preview: the source environment of a repository."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from domain.blueprint import Blueprint
from domain.variables import SecretVariable


class LoadSourceRequest(BaseModel):
    """Argument of the `load_source_environment` activity."""

    model_config = ConfigDict(frozen=True)

    repository: str = Field(min_length=3, description="owner/name on the Git host")


class SourceEnvironment(BaseModel):
    """A project's blueprint plus its secrets, still sealed (the payload codec adds a layer)."""

    model_config = ConfigDict(frozen=True)

    blueprint: Blueprint
    secrets: list[SecretVariable] = Field(default_factory=list)
