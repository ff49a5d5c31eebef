"""The pull (or merge) request a preview is built for."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bounds a Git host never exceeds; anything beyond is bad input, refused before it can
# reach Temporal (ids ≤ 1000 bytes, payloads ≤ 2 MB) and fail there.
MAX_TEXT = 1024


class PullRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: Literal["github", "gitlab"] = "github"
    repository: str = Field(min_length=3, max_length=200, pattern=r"^[^/\s]+(/[^/\s]+)+$",
                            description="owner/name (GitLab: group/…/name)")
    number: int = Field(ge=1, le=2**31 - 1)
    head_sha: str = Field(pattern=r"^[0-9a-f]{7,64}$")
    # Git itself bounds each path component of a ref (255 bytes), not the whole name.
    branch: str = Field("", max_length=MAX_TEXT)
    base_branch: str = Field("", max_length=MAX_TEXT)
    base_sha: str | None = Field(None, pattern=r"^[0-9a-f]{7,64}$",
                                 description="The base branch's commit when the PR last changed")
    title: str = Field("", max_length=MAX_TEXT)
    author: str = Field("", max_length=255)
    url: str = Field("", max_length=MAX_TEXT)
    is_fork: bool = False
    is_draft: bool = False
    labels: tuple[str, ...] = Field((), max_length=100)
    updated_at: datetime | None = Field(
        None, description="When the Git host last changed the PR: orders reordered deliveries"
    )

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """A lone surrogate passes str validation but cannot be encoded as UTF-8 later."""
        if isinstance(data, dict):
            for key, value in data.items():
                for text in value if isinstance(value, list | tuple) else [value]:
                    if isinstance(text, str):
                        try:
                            text.encode()
                        except UnicodeEncodeError:
                            raise ValueError(f"{key} is not valid unicode") from None
        return data
