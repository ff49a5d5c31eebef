"""Lifecycle jobs of a blueprint: commands run to completion in the preview (migrations,
seeds, goodbyes). The planner's rule is in domain/plan_elements.py, the activity pair in
activities/kubernetes/jobs.py."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from domain.base import Named, Resources


class JobPhase(StrEnum):
    deploy = "deploy"  # before the applications roll out, at each new commit: migrations
    first_deploy = "first_deploy"  # once, after the databases exist: seeds
    destroy = "destroy"  # first thing in teardown, while everything still exists


class Job(Named):
    """A command run to completion in the preview's namespace, as a Kubernetes Job under
    the applications' pod security. It gets the project's variables, those scoped to its
    name, and the connection URLs of what it names in depends_on, as an application does.
    Lines `KEY=value` it writes to the file $PREVIEW_OUTPUT become variables of every
    application (through their Secrets)."""

    when: JobPhase = JobPhase.deploy
    application: str | None = Field(
        None, description="Run this application's image, at the tag the application runs")
    image: str | None = Field(None, description="Or an image of its own, with its tag")
    command: list[str] = Field(min_length=1)
    depends_on: list[str] = Field(
        default_factory=list, description="Databases and caches it connects to: it gets "
        "their connection URLs as an application does (DATABASE_URL, DATABASE_URL_<NAME>, "
        "REDIS_URL); a deploy job's PostgreSQL databases are watched for the migration report")
    resources: Resources = Resources()
    timeout_minutes: int = Field(10, ge=1, le=240)

    @model_validator(mode="after")
    def _one_image(self) -> Job:
        if (self.application is None) == (self.image is None):
            raise ValueError(f"job {self.name}: name either `application` (run its image) or "
                             "`image` (an image of its own), not both or neither")
        return self
