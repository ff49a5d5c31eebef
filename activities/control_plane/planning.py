"""Planning, run as a local activity on the lifecycle worker.

The planner is pure (domain/plan.py), so it could run inside the workflow; it runs
here instead so its result is recorded in the workflow's history. A change to the
planner (a new resource kind, a renamed step) then never makes a running preview's
history non-deterministic: replays read the recorded plan instead of re-planning.

The deployment facts a blueprint does not hold (ingress controller, storage class,
load balancer, bucket of golden dumps) are the worker's: it is what reaches the
cluster and the cloud, so they come from its settings, not from the caller.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from temporalio import activity

from activities.errors import invalid_input
from domain.blueprint import EgressRule
from domain.compose import merged_blueprint
from domain.contract import PLAN_PREVIEW
from domain.plan import Plan, PlanError, PlanOptions, PlanRequest, plan_preview
from domain.variables import VariableError
from engine.settings import Settings


def database_egress(settings: Settings) -> list[EgressRule]:
    """The shared preview database server, as previews reach it, when its address is an
    IP: their egress policy lets them reach it without a setting of its own. A host name
    (an RDS endpoint) cannot go in a NetworkPolicy: PREVIEW_PREVIEW_EGRESS names it."""
    server = urlsplit(settings.preview_database_url)
    host, port = server.hostname or "", server.port or 5432
    if settings.preview_database_app_address:
        host, _, number = settings.preview_database_app_address.rpartition(":")
        port = int(number)
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return []
    return [] if address.is_loopback else [EgressRule(cidr=f"{address}/32", ports=[port])]


def plan_options(settings: Settings) -> PlanOptions:
    return PlanOptions(
        task_queue=settings.task_queue,
        ingress_namespace=settings.ingress_controller_namespace,
        ingress_cidrs=tuple(settings.ingress_controller_cidrs),
        url_port=settings.preview_url_port,
        ingress_wait_for_address=settings.ingress_wait_for_address,
        url_check=settings.preview_url_check,
        url_connect_to=settings.preview_url_connect_to,
        dns_cidrs=tuple(settings.cluster_dns_cidrs),
        egress=(*database_egress(settings), *settings.preview_egress),
        storage_class=settings.storage_class,
        golden_dump_bucket=settings.golden_dump_bucket,
        ingress_hostname=settings.ingress_hostname,
        base_domain=settings.base_domain,
        check_images=settings.check_images,
    )


class PlanningActivities:
    def __init__(self, options: PlanOptions) -> None:
        self.options = options

    @classmethod
    def from_settings(cls, settings: Settings) -> PlanningActivities:
        return cls(plan_options(settings))

    @activity.defn(name=PLAN_PREVIEW.name)
    async def plan_preview(self, request: PlanRequest) -> Plan:
        blueprint = request.source.blueprint
        try:
            if blueprint.compose is not None:
                if request.compose is None:
                    raise PlanError(f"the blueprint names the Compose file "
                                    f"{blueprint.compose.path}, and it was not read")
                blueprint = merged_blueprint(blueprint, request.compose)
            return plan_preview(blueprint, request.pull_request, request.source.secrets,
                                self.options, request.changed_files, request.chart_folders)
        except (PlanError, VariableError, ValueError) as error:
            raise invalid_input(f"cannot plan the preview: {error}") from None
