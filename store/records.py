"""What the store takes and gives: specs clients write, records read back, and pages.

Records are built from their table's rows here (`from_row`), so a column's meaning is
read in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from domain.blueprint import (
    COLLECTIONS,
    AppliesTo,
    ComposeSource,
    DnsName,
    Network,
    PreviewPolicy,
    Variable,
    VariableKey,
    VariableScope,
)
from domain.secrets import SealedValue

T = TypeVar("T")
RepositoryName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$",
        max_length=255,
        description="owner/name (GitLab: group/subgroup/name) on the Git host",
    ),
]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(BaseModel, Generic[T]):
    """One page of a listing, with the total so clients know when to stop."""

    items: list[T]
    total: int = Field(description="Number of items across all pages")
    limit: int
    offset: int


class ProjectSpec(Record):
    """A project as clients write it: what previews are copied from and how."""

    name: DnsName
    repository: RepositoryName
    source_environment: DnsName = Field(
        "production", description="The environment previews are copied from"
    )
    network: Network = Network()
    policy: PreviewPolicy = PreviewPolicy()
    compose: ComposeSource | None = Field(
        None, description="A Compose file of the repository its services come from")


class ProjectRecord(ProjectSpec):
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ProjectRecord:
        return cls(
            name=row["name"], repository=row["repository"],
            source_environment=row["source_environment"],
            network=Network.model_validate_json(row["network"]),
            policy=PreviewPolicy.model_validate_json(row["policy"]),
            compose=ComposeSource.model_validate_json(row["compose"]) if row["compose"] else None,
            created_at=row["created_at"], updated_at=row["updated_at"],
        )


def _check_scope(
    key: str, scope: VariableScope, environment: str | None, application: str | None
) -> None:
    if environment is not None and scope != VariableScope.environment:
        raise ValueError(f"variable {key}: `environment` is only for scope environment")
    if (scope == VariableScope.application) != (application is not None):
        raise ValueError(
            f"variable {key}: scope application needs `application`, other scopes must not"
        )


class VariableRef(Record):
    """What identifies one variable or secret within a project."""

    key: VariableKey
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = Field(
        None, description="For scope environment; defaults to the project's source environment"
    )
    application: str | None = None
    applies_to: AppliesTo = AppliesTo.both

    @model_validator(mode="after")
    def _scope(self) -> VariableRef:
        _check_scope(self.key, self.scope, self.environment, self.application)
        return self

    def describe(self) -> str:
        """'KEY (scope=..., applies_to=...)': how messages and audit records name it."""
        where = [f"scope={self.scope.value}"]
        if self.environment:
            where.append(f"environment={self.environment}")
        if self.application:
            where.append(f"application={self.application}")
        where.append(f"applies_to={self.applies_to.value}")
        return f"{self.key} ({', '.join(where)})"


class ScopedVariable(Variable):
    """A stored variable: the blueprint's Variable plus, for scope environment, which one."""

    environment: DnsName | None = Field(
        None, description="For scope environment; defaults to the project's source environment"
    )

    @model_validator(mode="after")
    def _environment(self) -> ScopedVariable:
        _check_scope(self.key, self.scope, self.environment, self.application)
        return self

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ScopedVariable:
        return cls(
            key=row["key"], value=row["value"], scope=row["scope"],
            environment=row["environment"], application=row["application"], kind=row["kind"],
            applies_to=row["applies_to"],
        )

    @property
    def ref(self) -> VariableRef:
        return VariableRef(
            key=self.key, scope=self.scope, environment=self.environment,
            application=self.application, applies_to=self.applies_to,
        )

    def as_variable(self) -> Variable:
        return Variable(**self.model_dump(exclude={"environment"}))


class SecretMetadata(Record):
    """Everything about a stored secret except its value."""

    key: str
    scope: VariableScope
    environment: str | None
    application: str | None
    applies_to: AppliesTo
    key_id: str = Field(description="Id of the master key that wraps the value's data key")
    version: int = Field(description="1 when created, +1 on every change of value")
    created_at: datetime
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> SecretMetadata:
        return cls(
            key=row["key"], scope=row["scope"], environment=row["environment"],
            application=row["application"], applies_to=row["applies_to"],
            key_id=row["key_id"], version=row["version"], created_at=row["created_at"],
            updated_at=row["updated_at"], updated_by=row["updated_by"],
        )


class ClusterMetadata(Record):
    """A stored cluster kubeconfig, without the kubeconfig."""

    name: str
    context: str | None = Field(description="The kubeconfig context used; None: its current")
    key_id: str = Field(description="Id of the master key that wraps the kubeconfig's data key")
    version: int
    created_at: datetime
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ClusterMetadata:
        return cls(
            name=row["name"], context=row["context"], key_id=row["key_id"],
            version=row["version"], created_at=row["created_at"],
            updated_at=row["updated_at"], updated_by=row["updated_by"],
        )


class ClusterCredentials(Record):
    """What a worker needs to reach a stored cluster: the sealed kubeconfig."""

    name: str
    context: str | None
    sealed: SealedValue


class TokenRecord(Record):
    id: int
    name: str
    project: str | None = Field(description="The only project the token may act on; None: admin")
    admin: bool
    created_at: datetime
    created_by: str
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TokenRecord:
        """From an api_tokens row joined with its project's name (as `project`)."""
        return cls(
            id=row["id"], name=row["name"], project=row["project"], admin=row["admin"],
            created_at=row["created_at"], created_by=row["created_by"],
            last_used_at=row["last_used_at"],
        )


class AuditEntry(Record):
    id: int
    at: datetime
    actor: str
    action: str
    object: str
    project: str | None


class ImportSummary(Record):
    """What an import did; ImportResult adds how many elements of each collection."""

    project: str
    environment: str
    created: bool = Field(description="True when the import created the project")
    variables: int
    connections: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Application → the connection URL variables its previews get (only for "
                    "what it names in depends_on)")


# One count per blueprint collection (applications, databases, ...), named as its field.
_COUNTS: dict[str, Any] = {c.field: (int, Field(description=f"Number of {c.field}"))
                           for c in COLLECTIONS}
ImportResult = create_model("ImportResult", __base__=ImportSummary, __module__=__name__,
                            **_COUNTS)
