"""Variable resolution: which value each application sees in a given target.

Precedence, lowest first: built-in < project < environment < application. A variable
of kind `override` beats every plain value; among equals, one that applies only to
this target beats one that applies to both. Aliases point at another key and are
followed transitively; a cycle is rejected with the cycle named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from domain.blueprint import AppliesTo, Variable, VariableKind, VariableScope
from domain.secrets import SealedValue


class Target(StrEnum):
    production = "production"
    preview = "preview"


class SecretVariable(BaseModel):
    """A secret as the store hands it to the engine: sealed, scoped like a variable."""

    model_config = ConfigDict(frozen=True)
    key: str
    sealed: SealedValue
    scope: VariableScope = VariableScope.project
    application: str | None = None
    applies_to: AppliesTo = AppliesTo.both


class VariableError(ValueError):
    pass


class AliasCycleError(VariableError):
    pass


Value = str | SealedValue

_LEVEL = {VariableScope.project: 1, VariableScope.environment: 2, VariableScope.application: 3}


def _applies(applies_to: AppliesTo, target: Target) -> bool:
    if applies_to == AppliesTo.both:
        return True
    return (applies_to == AppliesTo.previews) == (target == Target.preview)


def _rank(scope: VariableScope, applies_to: AppliesTo, override: bool) -> tuple[int, int, int]:
    return (int(override), _LEVEL[scope], int(applies_to != AppliesTo.both))


def resolve_variables(
    variables: Sequence[Variable],
    secrets: Sequence[SecretVariable] = (),
    *,
    target: Target,
    application: str,
    builtins: Mapping[str, str] = {},
) -> dict[str, Value]:
    """The variables one application sees; secret values stay sealed."""
    # key -> (rank, kind, value); rank 0 is the built-ins
    best: dict[str, tuple[tuple[int, int, int], VariableKind, Value]] = {
        key: ((0, 0, 0), VariableKind.value, value) for key, value in builtins.items()
    }

    def offer(key: str, rank: tuple[int, int, int], kind: VariableKind, value: Value) -> None:
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, kind, value)

    for var in variables:
        if var.application not in (None, application) or not _applies(var.applies_to, target):
            continue
        if var.kind == VariableKind.secret:
            continue  # a declaration only: the value comes sealed from the store
        rank = _rank(var.scope, var.applies_to, var.kind == VariableKind.override)
        offer(var.key, rank, var.kind, var.value)
    for secret in secrets:
        if secret.application not in (None, application) or not _applies(
            secret.applies_to, target
        ):
            continue
        offer(
            secret.key,
            _rank(secret.scope, secret.applies_to, False),
            VariableKind.secret,
            secret.sealed,
        )

    resolved: dict[str, Value] = {}
    for key in best:
        resolved[key] = _follow(key, best)
    return resolved


def _follow(key: str, best: Mapping[str, tuple[object, VariableKind, Value]]) -> Value:
    path = [key]
    while True:
        _, kind, value = best[path[-1]]
        if kind != VariableKind.alias:
            return value
        assert isinstance(value, str)
        if value in path:
            cycle = " -> ".join([*path[path.index(value):], value])
            raise AliasCycleError(f"variable aliases form a cycle: {cycle}")
        if value not in best:
            raise VariableError(f"variable {path[-1]} is an alias of {value}, which is not set")
        path.append(value)
