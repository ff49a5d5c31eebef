"""The pull (or merge) request a preview is built for."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PullRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: Literal["github", "gitlab"] = "github"
    repository: str = Field(min_length=3, description="owner/name")
    number: int = Field(ge=1)
    head_sha: str = Field(pattern=r"^[0-9a-f]{7,64}$")
    branch: str = ""
    base_branch: str = ""
    title: str = ""
    author: str = ""
    url: str = ""
    is_fork: bool = False
    is_draft: bool = False
    labels: tuple[str, ...] = ()
    updated_at: datetime | None = Field(
        None, description="When the Git host last changed the PR: orders reordered deliveries"
    )
