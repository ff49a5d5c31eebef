"""Planning, run as a (local) activity.

The planner is pure (domain/plan.py), so it could run inside the workflow; it runs
here instead so its result is recorded in the workflow's history. A change to the
planner (a new resource kind, a renamed step) then never makes a running preview's
history non-deterministic: replays read the recorded plan instead of re-planning.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from activities.errors import invalid_input
from domain.plan import Plan, PlanError, PlanOptions, plan_preview
from domain.pull_request import PullRequest
from domain.source import SourceEnvironment
from domain.variables import VariableError

PLAN_PREVIEW = "plan_preview"


class PlanRequest(BaseModel):
    source: SourceEnvironment
    pull_request: PullRequest
    options: PlanOptions


@activity.defn(name=PLAN_PREVIEW)
async def plan(request: PlanRequest) -> Plan:
    try:
        return plan_preview(request.source.blueprint, request.pull_request,
                            request.source.secrets, request.options)
    except (PlanError, VariableError, ValueError) as error:
        raise invalid_input(f"cannot plan the preview: {error}") from None
