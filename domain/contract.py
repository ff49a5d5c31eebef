"""The contract between workflows and workers: every activity a workflow may call.

A workflow names an activity only through this module (or a resource spec's
`present`/`absent`/`sleep`/`wake`), and each worker derives from it what it must serve:
`required_activities` lists, per system, every name a plan or a workflow can ask for,
and the worker refuses to start while one of them is missing.

Which worker serves an activity follows from its *system* and the environment's
placement (`domain.systems.task_queue_for`): a tenant isolated by cluster or by cloud account has a
worker of its own, on a task queue of its own, holding only that tenant's credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from domain.feedback import (
    ChangedFilesRequest,
    Feedback,
    RepositoryFileRequest,
    RepositoryFolder,
    RepositoryFolderRequest,
)
from domain.golden import (
    GoldenDiscardInput,
    GoldenMaskInput,
    GoldenPromoteInput,
    GoldenPruneInput,
    GoldenPublishInput,
    GoldenRestoreInput,
    GoldenVerifyInput,
)
from domain.plan import Plan, PlanRequest
from domain.resources import (
    AwsEnvironmentInput,
    AwsSweepInput,
    KubeEnvironmentInput,
    KubeSweepInput,
    PreviewDatabase,
    ResourceSpec,
    Spec,
    SweepTargets,
)
from domain.source import LoadSourceRequest, SourceEnvironment
from domain.systems import System


@dataclass(frozen=True)
class ActivityContract:
    """One activity: its name on the wire, what it takes and gives, who serves it."""

    name: str
    system: System
    input: Any  # a type, or None for an activity without argument
    output: Any  # a type (or generic alias like list[str]); None returns nothing


# -- the preview lifecycle ------------------------------------------------------------

LOAD_SOURCE_ENVIRONMENT = ActivityContract(
    "load_source_environment", System.control_plane, LoadSourceRequest, SourceEnvironment)
PLAN_PREVIEW = ActivityContract(  # a local activity: its result is recorded in history
    "plan_preview", System.control_plane, PlanRequest, Plan)
PUBLISH_FEEDBACK = ActivityContract("publish_feedback", System.git_host, Feedback, None)
LIST_CHANGED_FILES = ActivityContract(  # only when the blueprint filters by path
    "list_changed_files", System.git_host, ChangedFilesRequest, list[str])
READ_REPOSITORY_FILE = ActivityContract(  # only when the blueprint names a Compose file
    "read_repository_file", System.git_host, RepositoryFileRequest, str)
READ_REPOSITORY_FOLDER = ActivityContract(  # only for a chart in the PR's repository
    "read_repository_folder", System.git_host, RepositoryFolderRequest, RepositoryFolder)

# -- golden copies (workflows/golden.py) ----------------------------------------------

RESTORE_GOLDEN = ActivityContract(
    "restore_golden_generation", System.postgres, GoldenRestoreInput, str)
MASK_GOLDEN = ActivityContract("mask_golden_generation", System.postgres, GoldenMaskInput, None)
VERIFY_GOLDEN = ActivityContract(
    "verify_golden_generation", System.postgres, GoldenVerifyInput, None)
PUBLISH_GOLDEN = ActivityContract("publish_golden_dump", System.postgres, GoldenPublishInput, None)
PROMOTE_GOLDEN = ActivityContract(
    "promote_golden_generation", System.postgres, GoldenPromoteInput, None)
DISCARD_GOLDEN = ActivityContract(
    "discard_golden_generation", System.postgres, GoldenDiscardInput, None)
PRUNE_GOLDEN = ActivityContract(
    "prune_golden_generations", System.postgres, GoldenPruneInput, list[str])

# -- the orphan sweeper (workflows/sweeper.py) ----------------------------------------

LIVE_ENVIRONMENTS = ActivityContract("live_environments", System.control_plane, None, list[str])
LIST_SWEEP_TARGETS = ActivityContract("list_sweep_targets", System.control_plane, None,
                                      SweepTargets)
# Workflow ids → those of them that run now: asked by id, strongly consistent (the
# visibility list behind LIVE_ENVIRONMENTS may lag or answer partially).
RUNNING_PREVIEWS = ActivityContract("running_previews", System.control_plane, list[str],
                                    list[str])
LIST_KUBE_ENVIRONMENTS = ActivityContract(
    "list_kube_environments", System.kubernetes, KubeSweepInput, dict[str, list[str]])
REMOVE_KUBE_ENVIRONMENT = ActivityContract(
    "remove_kube_environment", System.kubernetes, KubeEnvironmentInput, list[str])
LIST_AWS_ENVIRONMENTS = ActivityContract(
    "list_aws_environments", System.aws, AwsSweepInput, dict[str, list[str]])
REMOVE_AWS_ENVIRONMENT = ActivityContract(
    "remove_aws_environment", System.aws, AwsEnvironmentInput, list[str])
LIST_PREVIEW_DATABASES = ActivityContract(
    "list_preview_databases", System.postgres, None, list[PreviewDatabase])
REMOVE_PREVIEW_DATABASE = ActivityContract(
    "remove_preview_database", System.postgres, str, list[str])

CONTRACT: tuple[ActivityContract, ...] = tuple(
    value for value in dict(globals()).values() if isinstance(value, ActivityContract))


def spec_types() -> tuple[type[Spec], ...]:
    """Every kind of resource a plan can hold (the members of the ResourceSpec union)."""
    union = get_args(ResourceSpec)[0]
    return tuple(get_args(union))


def spec_activities(spec: type[Spec]) -> list[str]:
    names = [spec.present, spec.absent, spec.sleep, spec.wake, spec.check]
    return [name for name in names if name]


def required_activities(systems: frozenset[System]) -> dict[str, System]:
    """Every activity name a worker serving these systems must register."""
    required = {c.name: c.system for c in CONTRACT if c.system in systems}
    for spec in spec_types():
        if spec.system in systems:
            required.update(dict.fromkeys(spec_activities(spec), spec.system))
    return required
