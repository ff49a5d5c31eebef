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

import logging

from activities.aws import AwsClients
from activities.postgres.clones import PreviewDatabaseActivities
from activities.postgres.golden import GoldenCopyActivities
from activities.postgres.server import PgServer, PostgresAccess, pg_bin_dir, stream_copy
from engine.sealing import Sealer

log = logging.getLogger(__name__)
LOOPBACK = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}


def _same_server(a: PgServer, b: PgServer) -> bool:
    (host_a, port_a), (host_b, port_b) = a.endpoint, b.endpoint
    return (LOOPBACK.get(host_a, host_a), port_a) == (LOOPBACK.get(host_b, host_b), port_b)

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
    app_address: str | None = None, control_plane_url: str | None = None,
    sweep_grace: float = 0.0,
) -> list[object]:
    """The objects whose methods a worker registers: preview databases and golden copies
    on one shared access (the golden server defaults to the preview server)."""
    closed, keep = [], []
    if control_plane_url and _same_server(PgServer(control_plane_url), PgServer(admin_url)):
        control = PgServer(control_plane_url)
        log.warning(
            "the control plane's database %s is on the preview server %s:%d: previews' roles "
            "are refused there (CONNECT revoked from PUBLIC), but a server of its own keeps "
            "the PR's code off the server that holds the engine's secrets (README: Production "
            "notes)", control.database, *control.endpoint)
        closed.append(control.database)
        keep.append((control.database, control.user))
    access = PostgresAccess(admin_url, sealer, masking_key,
                            golden_admin_url=golden_admin_url, aws=aws,
                            app_address=app_address, closed_databases=closed,
                            keep_connecting=keep)
    return [PreviewDatabaseActivities(access, sweep_grace=sweep_grace),
            GoldenCopyActivities(access)]
