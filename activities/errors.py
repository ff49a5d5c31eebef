"""Errors activities raise when retrying cannot help: a user must act.

The type names live in domain/errors.py, where the workflows' retry policies read them."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from domain.errors import (
    FOREIGN_RESOURCE,
    INVALID_INPUT,
    QUOTA_EXCEEDED,
    ROLLOUT_FAILED,
    UNKNOWN_REPOSITORY,
)

__all__ = ["FOREIGN_RESOURCE", "INVALID_INPUT", "QUOTA_EXCEEDED", "ROLLOUT_FAILED",
           "UNKNOWN_REPOSITORY", "foreign_resource", "invalid_input"]


def foreign_resource(what: str, environment: str) -> ApplicationError:
    return ApplicationError(
        f"{what} exists but is not managed by preview-engine for environment {environment}; "
        "refusing to adopt it. Delete or rename it, or change the blueprint.",
        type=FOREIGN_RESOURCE,
        non_retryable=True,
    )


def invalid_input(message: str) -> ApplicationError:
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)
