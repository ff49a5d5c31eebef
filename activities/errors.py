"""Errors activities raise when retrying cannot help: a user must act."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

FOREIGN_RESOURCE = "ForeignResource"
INVALID_INPUT = "InvalidInput"
QUOTA_EXCEEDED = "QuotaExceeded"
UNKNOWN_REPOSITORY = "UnknownRepository"
ROLLOUT_FAILED = "RolloutFailed"

# Matched by type name in the workflow's retry policy.
NON_RETRYABLE = [FOREIGN_RESOURCE, INVALID_INPUT, QUOTA_EXCEEDED, ROLLOUT_FAILED,
                 UNKNOWN_REPOSITORY]


def foreign_resource(what: str, environment: str) -> ApplicationError:
    return ApplicationError(
        f"{what} exists but is not managed by preview-engine for environment {environment}; "
        "refusing to adopt it. Delete or rename it, or change the blueprint.",
        type=FOREIGN_RESOURCE,
        non_retryable=True,
    )


def invalid_input(message: str) -> ApplicationError:
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)
