"""A blueprint whose services come from the repository's Compose file, or whose Helm
chart is a folder of the repository: each deploy reads the file or folder at the pull
request's head commit (from the Git host stand-in), so a PR that changes it previews the
change, and one it cannot map (or a commit without it) fails naming what is wrong. The
saga's resources are the recording Inventory; planning and the files are real."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from domain.resources import ApplicationSpec, ChartSpec, PostgresCloneSpec
from tests.activities.test_git_host import reader
from tests.plugins.git_host import GitHost
from tests.workflows.harness import Harness, pull_request
from workflows.preview import PreviewState

FIRST, SECOND, THIRD = "1" * 40, "2" * 40, "3" * 40
COMPOSE = """services:
  web:
    image: registry.local/shop/web:dev
    ports: ["8080:3000"]
    depends_on: [db]
    environment:
      GREETING: hello
  db:
    image: postgres:16
"""
WITH_API = COMPOSE + """  api:
    image: registry.local/shop/api
    expose: ["8080"]
    depends_on: [db]
"""
PRIVILEGED = WITH_API + """    privileged: true
"""


async def test_each_deploy_previews_the_prs_own_compose_file(
        temporal_client: Client, blueprint_dir: Path, git_host: GitHost) -> None:
    harness = Harness(
        temporal_client, blueprint_dir, compose={"path": "deploy/docker-compose.yml"},
        applications=[], jobs=[], variables=[{"key": "GREETING", "value": "from the blueprint",
                                              "scope": "application", "application": "web"}],
        # The blueprint's own entry replaces the file's `db`: cloned and masked.
        databases=[{"name": "db", "source": "shop", "data_policy": "masked_clone",
                    "masking": [{"table": "users", "column": "email", "method": "fake"}]}])
    for sha, text in ((FIRST, COMPOSE), (SECOND, WITH_API), (THIRD, PRIVILEGED)):
        git_host.files.put("acme/shop", sha, "deploy/docker-compose.yml", text)

    def present(kind: type) -> dict[str, object]:
        return {str(getattr(s, "name", None) or getattr(s, "database", "")): s
                for s in harness.inventory.present.values() if isinstance(s, kind)}

    async with harness.worker(reader(git_host).read_repository_file):
        handle = await harness.deploy(pull_request(61, FIRST))
        status = await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        apps = present(ApplicationSpec)
        assert set(apps) == {"web"}
        web = apps["web"]
        assert isinstance(web, ApplicationSpec)
        assert web.image == f"registry.local/shop/web:{FIRST}"  # the PR's commit, not :dev
        assert web.ports == [3000]
        [clone] = present(PostgresCloneSpec).values()
        assert isinstance(clone, PostgresCloneSpec)
        assert clone.data_policy == "masked_clone" and clone.source == "shop"
        assert set(status.urls) == {"web"}
        [call] = git_host.calls_to("GET", "/contents/")
        assert call.query == {"ref": FIRST}

        # The PR adds a service to its Compose file: its preview gets it.
        await harness.deploy(pull_request(61, SECOND))
        status = await harness.wait_state(
            handle, lambda s: s.state == PreviewState.ready and s.head_sha == SECOND)
        assert set(present(ApplicationSpec)) == {"web", "api"}

        # One it cannot map fails the update, naming the file, the line and the key;
        # the previous commit keeps running.
        await harness.deploy(pull_request(61, THIRD))
        status = await harness.wait_state(handle, lambda s: s.last_error is not None)
        assert status.state == PreviewState.ready and status.head_sha == SECOND
        error = status.last_error or ""
        assert "deploy/docker-compose.yml:14:5: services.api.privileged" in error, error
        assert "preview pods are never privileged" in error, error
        assert set(present(ApplicationSpec)) == {"web", "api"}


CHART = Path(__file__).parents[2] / "examples" / "charts" / "hello"


async def test_each_deploy_renders_the_prs_own_chart_folder(
        temporal_client: Client, blueprint_dir: Path, git_host: GitHost) -> None:
    harness = Harness(temporal_client, blueprint_dir, charts=[
        {"name": "shop", "path": "deploy/chart", "image_tag_values": ["image.tag"]}])
    for sha in (FIRST, SECOND):
        git_host.files.put_folder("acme/shop", sha, "deploy/chart", CHART)
    git_host.files.put("acme/shop", SECOND, "deploy/chart/templates/extra.yaml",
                       "kind: ConfigMap\n")  # the PR adds a template

    def rendered() -> ChartSpec:
        [spec] = [s for s in harness.inventory.present.values() if isinstance(s, ChartSpec)]
        return spec

    async with harness.worker(reader(git_host).read_repository_folder):
        handle = await harness.deploy(pull_request(62, FIRST))
        await harness.wait_state(handle, lambda s: s.state == PreviewState.ready)
        first = rendered()
        assert first.folder is not None and first.chart is None
        assert first.folder.files == len([f for f in CHART.rglob("*") if f.is_file()])
        assert first.values["image"] == {"tag": FIRST}
        assert {c.query["ref"] for c in git_host.calls_to("GET", "/contents/")} == {FIRST}

        # The PR changes its chart: the next deploy renders the new files.
        await harness.deploy(pull_request(62, SECOND))
        await harness.wait_state(
            handle, lambda s: s.state == PreviewState.ready and s.head_sha == SECOND)
        second = rendered()
        assert second.folder is not None
        assert second.folder.files == first.folder.files + 1
        assert second.folder.digest != first.folder.digest

        # A commit without the folder fails that update, naming it; SECOND keeps running.
        await harness.deploy(pull_request(62, THIRD))
        status = await harness.wait_state(handle, lambda s: s.last_error is not None)
        assert status.state == PreviewState.ready and status.head_sha == SECOND
        assert f"there is no folder deploy/chart of acme/shop at {THIRD[:12]}" in (
            status.last_error or "")
        assert rendered() == second
