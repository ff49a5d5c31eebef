"""PostgreSQL: masked golden copies of source databases, and one database per preview.

server.py   server access shared by both: URLs, admin connections, ownership marks,
            advisory locks, the pg_dump/pg_restore pipeline, pg_bin_dir()
clones.py   PreviewDatabaseActivities: a preview's database and role; the sweeper's half
clone_method.py  file_copy_method: clone (copy-on-write) or copy, checked once per
            server and golden generation
golden.py   GoldenCopyActivities: restore, mask, verify, publish, promote, prune
verify.py   the check that masking left no original value behind
"""

from __future__ import annotations

from activities.aws import AwsClients
from activities.postgres.clones import PreviewDatabaseActivities
from activities.postgres.golden import GoldenCopyActivities
from activities.postgres.server import PgServer, PostgresAccess, pg_bin_dir, stream_copy
from engine.sealing import Sealer

__all__ = [
    "GoldenCopyActivities",
    "PgServer",
    "PostgresAccess",
    "PreviewDatabaseActivities",
    "pg_bin_dir",
    "postgres_activities",
    "stream_copy",
]


def postgres_activities(
    admin_url: str, sealer: Sealer, masking_key: bytes, *,
    golden_admin_url: str | None = None, aws: AwsClients | None = None,
    app_address: str | None = None,
) -> list[object]:
    """The objects whose methods a worker registers: preview databases and golden copies
    on one shared access (the golden server defaults to the preview server)."""
    access = PostgresAccess(admin_url, sealer, masking_key,
                            golden_admin_url=golden_admin_url, aws=aws,
                            app_address=app_address)
    return [PreviewDatabaseActivities(access), GoldenCopyActivities(access)]
