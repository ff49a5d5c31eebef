"""Inputs of the golden-copy refresh: what the schedule starts and each step's input.

restore → mask → verify → (publish) → promote; see workflows/golden.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from domain.blueprint import MaskingRule

SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
GENERATION_NAME = r"^[a-z_][a-z0-9_]{0,62}$"



class GoldenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GoldenRefreshRequest(GoldenModel):
    """One refresh of a source's golden copy (what the schedule starts)."""

    source_url: str = Field(
        repr=False,
        description="libpq URL of the source database. Prefer no password here: the "
        "worker's PGPASSFILE serves it, and this value is stored in workflow history.",
    )
    source_name: str = Field(pattern=SOURCE_NAME)
    masking: list[MaskingRule] = Field(default_factory=list)
    keep_generations: int = Field(3, ge=1, le=50)
    jobs: int = Field(2, ge=1, le=16, description="pg_restore parallel jobs")
    scan_min_length: int = Field(
        6, ge=1, description="Originals this long are searched in every text column too"
    )
    dump_bucket: str | None = Field(
        None, description="S3 bucket to publish the verified copy to as a pg_dump, for "
        "container databases (see domain.masking.golden_dump_uri); None: not published"
    )


class GoldenStep(GoldenModel):
    source_name: str = Field(pattern=SOURCE_NAME)
    generation: str = Field(pattern=GENERATION_NAME)


class GoldenRestoreInput(GoldenStep):
    source_url: str = Field(repr=False)
    jobs: int = Field(2, ge=1, le=16)


class GoldenMaskInput(GoldenStep):
    masking: list[MaskingRule] = Field(default_factory=list)


class GoldenVerifyInput(GoldenStep):
    source_url: str = Field(repr=False)
    masking: list[MaskingRule] = Field(default_factory=list)
    scan_min_length: int = Field(6, ge=1)


class GoldenPromoteInput(GoldenStep):
    masking: list[MaskingRule] = Field(default_factory=list)


class GoldenDiscardInput(GoldenStep):
    pass


class GoldenPublishInput(GoldenStep):
    dump_uri: str = Field(pattern=r"^s3://[^/]+/.+", description="The pointer to update")
    masking: list[MaskingRule] = Field(default_factory=list)
    keep_generations: int = Field(3, ge=1, le=50)


class GoldenPruneInput(GoldenModel):
    source_name: str = Field(pattern=SOURCE_NAME)
    keep_generations: int = Field(3, ge=1, le=50)
