"""Path and query parameters that several groups of routes share."""

from typing import Annotated

from fastapi import Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, ValidationError

from domain.blueprint import AppliesTo, VariableScope
from store import VariableRef

KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
BIGINT = 2**63 - 1  # PostgreSQL's bigint: larger numbers cannot name anything stored



def _storable(value: str) -> str:
    # PostgreSQL's text cannot hold NUL: refused here with the field named, not a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


Text = Annotated[str, AfterValidator(_storable)]  # free text that is stored as it is
ProjectName = Annotated[str, Path(description="Project name", max_length=63)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=BIGINT, description="Items to skip")]
Key = Annotated[str, Path(pattern=KEY_PATTERN, max_length=128, description="Variable key")]


def variable_ref(
    key: Key,
    scope: Annotated[VariableScope, Query()] = VariableScope.project,
    environment: Annotated[Text | None, Query(description="For scope environment")] = None,
    application: Annotated[Text | None, Query(description="For scope application")] = None,
    applies_to: Annotated[AppliesTo, Query()] = AppliesTo.both,
) -> VariableRef:
    """Which variable or secret a path key and query parameters name."""
    try:
        return VariableRef(key=key, scope=scope, environment=environment,
                           application=application, applies_to=applies_to)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in error.errors(include_input=False)]
        ) from None


RefDep = Annotated[VariableRef, Depends(variable_ref)]
