"""Run the starter service: `python -m starter` (settings from PREVIEW_* variables)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import uvicorn

from engine.client import connect
from engine.sealing import Sealer
from engine.settings import Settings
from starter.app import create_app
from store import Store


async def serve(settings: Settings) -> None:
    sealer = Sealer.from_settings(settings)
    store = await Store.connect(settings.database_url, sealer)
    await store.migrate()  # ordered, idempotent, one starter at a time (advisory lock)
    temporal = await connect(settings)
    app = create_app(settings, temporal, store, store=store, sealer=sealer)
    config = uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="info",
        access_log=False,
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await store.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("PREVIEW_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    settings = Settings()
    settings.require_secure("starter")
    asyncio.run(serve(settings))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip finalisation: the SDK's threads can crash it (exit 139)


if __name__ == "__main__":
    main()
