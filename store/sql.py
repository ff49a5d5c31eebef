"""What every part of the store writes the same way: JSON documents, page bounds and
audit rows."""

from __future__ import annotations

import json

import asyncpg
from pydantic import BaseModel

MAX_PAGE = 500


def document(model: BaseModel) -> str:
    """A model as the JSON text of a jsonb column."""
    return json.dumps(model.model_dump(mode="json"))


def optional_document(model: BaseModel | None) -> str | None:
    """...or NULL."""
    return None if model is None else document(model)


def page_bounds(limit: int, offset: int) -> tuple[int, int]:
    """LIMIT and OFFSET of one page: 1 to MAX_PAGE items, never before the first."""
    return max(1, min(limit, MAX_PAGE)), max(0, offset)


async def audit(
    conn: asyncpg.Connection, actor: str, action: str, object: str, project: str | None
) -> None:
    """Append who did what to which object (never a value) to the audit trail."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, object, project) VALUES ($1, $2, $3, $4)",
        actor, action, object, project,
    )
