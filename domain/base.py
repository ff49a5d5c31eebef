"""What every part of a blueprint is built from: frozen models that refuse unknown keys,
DNS-safe names, and a container's resources."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from domain.naming import DNS_LABEL


def _dns_label(value: str) -> str:
    if len(value) > 40 or not DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-safe name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 40 characters"
        )
    return value


DnsName = Annotated[str, AfterValidator(_dns_label)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Named(Model):
    """A document a project holds several of, each known by its name (environments and
    the elements of a blueprint's collections)."""

    name: DnsName


class Resources(Model):
    cpu: str = "100m"
    memory: str = "128Mi"
