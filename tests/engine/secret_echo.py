"""A workflow whose input and result carry a secret, to check what the server stores."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow


class Carrier(BaseModel):
    password: str


@activity.defn
async def echo_secret(carrier: Carrier) -> Carrier:
    return Carrier(password=carrier.password[::-1])


@workflow.defn
class SecretEchoWorkflow:
    @workflow.run
    async def run(self, carrier: Carrier) -> Carrier:
        reversed_ = await workflow.execute_activity(
            echo_secret, carrier, start_to_close_timeout=timedelta(seconds=10)
        )
        return Carrier(password=reversed_.password[::-1])
