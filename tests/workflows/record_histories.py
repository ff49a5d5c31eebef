"""Record lifecycle histories for the replay tests: `python -m tests.workflows.record_histories`
(all of them, or one: `... sleep_wake_with_cache`).

Run it after an *intended* change to the workflow's command sequence (guarded with
`workflow.patched`), and commit the new files next to the old ones: old histories must
keep replaying, which is the point.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from temporalio.client import Client

from engine.client import data_converter
from engine.settings import Settings
from stack.temporal import TemporalDevServer
from starter import lifecycle
from tests.workflows.harness import BLUEPRINT, FAST, Harness, pull_request
from workflows.preview import PreviewState

OUT = Path(__file__).parent / "histories"


async def record(client: Client, blueprints: Path) -> None:
    """Today's lifecycles, as `*.v2.json` (contract, image waits, path filters, teardown
    receipts); the files without the suffix were recorded before those and stay."""
    harness = Harness(client, blueprints)
    async with harness.worker():
        # create (waiting once for an image) → redeploy → destroy with its receipt
        harness.inventory.not_yet[f"image:registry.local/shop/web:{'1' * 40}"] = 1
        handle = await harness.deploy(pull_request(1, "1" * 40))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await harness.deploy(pull_request(1, "2" * 40))
        await harness.wait_state(handle, lambda s: s.head_sha == "2" * 40)
        await lifecycle.destroy(client, "acme/shop", 1, "recorded")
        await handle.result()
        (OUT / "create_redeploy_destroy.v2.json").write_text(
            (await handle.fetch_history()).to_json())

        # a create that fails at the application step and is compensated
        harness.inventory.fail_on.add("ensure_application:web")
        handle = await harness.deploy(pull_request(2, "3" * 40))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.failed)
        await lifecycle.destroy(client, "acme/shop", 2, "recorded")
        await handle.result()
        (OUT / "failed_create_compensated.v2.json").write_text(
            (await handle.fetch_history()).to_json())

    # a PR that only touches ignored paths: skipped, nothing made
    filtered = Harness(client, blueprints, {**BLUEPRINT["policy"], "ignore_paths": ["docs/"]})
    filtered.inventory.changed = ["docs/index.md"]
    async with filtered.worker():
        handle = await filtered.deploy(pull_request(3, "4" * 40))
        await handle.result()
        (OUT / "skipped_by_path_filters.v2.json").write_text(
            (await handle.fetch_history()).to_json())


async def record_sleep_wake(client: Client, blueprints: Path) -> None:
    """create → sleep → wake → destroy of a preview with a Redis cache: recorded before
    caches slept too (the `sleep-caches` patch); it must keep replaying."""
    harness = Harness(client, blueprints, None, caches=[{"name": "sessions"}])
    async with harness.worker():
        handle = await harness.deploy(pull_request(4, "5" * 40))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await handle.signal("sleep")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.sleeping)
        await handle.signal("wake")
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await lifecycle.destroy(client, "acme/shop", 4, "recorded")
        await handle.result()
        (OUT / "sleep_wake_with_cache.v2.json").write_text(
            (await handle.fetch_history()).to_json())


async def record_degraded(client: Client, blueprints: Path) -> None:
    """create → its namespace removed behind its back → degraded (a check every second) →
    the same commit deployed again → ready → destroy: the `resource-check` patch."""
    harness = Harness(client, blueprints)
    async with harness.worker():
        pr = pull_request(5, "6" * 40)
        handle = await lifecycle.deploy(client, pr, task_queue=harness.task_queue,
                                        timeouts=FAST, resource_check_seconds=1)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        namespace = next(k for k in harness.inventory.present if k.startswith("namespace:"))
        del harness.inventory.present[namespace]
        await harness.wait_state(handle, lambda s: s.state == PreviewState.degraded)
        await harness.deploy(pr)
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        await lifecycle.destroy(client, "acme/shop", 5, "recorded")
        await handle.result()
        (OUT / "degraded_and_restored.v3.json").write_text(
            (await handle.fetch_history()).to_json())


async def record_repository_files(client: Client, blueprints: Path) -> None:
    """A blueprint whose services come from the PR's Compose file and whose chart is a
    folder of the PR's repository: read at each commit (patches compose-file and
    chart-folders), then destroyed."""
    from tests.activities.test_git_host import reader
    from tests.plugins.git_host import GitHost

    chart = Path(__file__).parents[2] / "examples" / "charts" / "hello"
    git_host = GitHost().start()
    try:
        for sha in ("5" * 40, "6" * 40):
            git_host.files.put("acme/shop", sha, "docker-compose.yml",
                               "services:\n  web:\n    image: registry.local/shop/web\n"
                               "    ports: ['3000:3000']\n")
            git_host.files.put_folder("acme/shop", sha, "deploy/chart", chart,
                                      without=["templates/extra-configmap.yaml"] * (sha < "6"))
        harness = Harness(client, blueprints, compose={"path": "docker-compose.yml"},
                          applications=[], jobs=[], charts=[{"name": "shop",
                                                             "path": "deploy/chart"}])
        files = reader(git_host)
        async with harness.worker(files.read_repository_file, files.read_repository_folder):
            handle = await harness.deploy(pull_request(5, "5" * 40))
            await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
            await harness.deploy(pull_request(5, "6" * 40))
            await harness.wait_state(handle, lambda s: s.head_sha == "6" * 40)
            await lifecycle.destroy(client, "acme/shop", 5, "recorded")
            await handle.result()
            (OUT / "repository_files.v4.json").write_text(
                (await handle.fetch_history()).to_json())
    finally:
        git_host.stop()


RECORDINGS = {"all": record, "sleep_wake_with_cache": record_sleep_wake,
              "degraded_and_restored": record_degraded,
              "repository_files": record_repository_files}


async def main(which: str = "all") -> None:
    state = Path(tempfile.mkdtemp())
    blueprints = state / "blueprints"
    blueprints.mkdir()
    (blueprints / "shop.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    server = TemporalDevServer(state / "temporal", headless=True).start()
    try:
        client = await Client.connect(server.address, data_converter=data_converter(Settings()))
        await RECORDINGS[which](client, blueprints)
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"recorded into {OUT}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
    sys.stdout.flush()
    os._exit(0)
