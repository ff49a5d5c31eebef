"""A file of the pull request's head commit (a blueprint's Compose file) and a folder (a
chart of the repository), from the local GitHub and GitLab stand-ins: the text or every
file, whatever the host's base64 wrapping or paging, a clear error for a path that is not
at that commit, and the folder's caps named."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git_host import GIT_HOST_REJECTED
from activities.git_host.repository import pack_folder
from domain.feedback import RepositoryFileRequest, RepositoryFolder, RepositoryFolderRequest
from tests.activities.test_git_host import reader
from tests.plugins.git_host import GitHost
from tests.repository_files import Link

COMPOSE = "services:\n  web:\n    image: registry.local/shop/web\n" + "# é\n" * 40
HEAD, OTHER = "a1b2c3d4e5f6a7b8c9d0", "0f0f0f0f0f0f0f0f0f0f"


async def test_github_gives_the_file_at_the_commit(git_host: GitHost) -> None:
    git_host.files.put("acme/shop", HEAD, "deploy/docker-compose.yml", COMPOSE)
    git_host.files.put("acme/shop", OTHER, "deploy/docker-compose.yml", "services: {}\n")
    read = await ActivityEnvironment().run(reader(git_host).read_repository_file,
                                           RepositoryFileRequest(
                                               repository="acme/shop", ref=HEAD,
                                               path="deploy/docker-compose.yml"))
    assert read == COMPOSE  # decoded from GitHub's 60-column base64, UTF-8 kept
    [call] = git_host.calls_to("GET", "/contents/")
    assert call.path == "/repos/acme/shop/contents/deploy/docker-compose.yml"
    assert call.query == {"ref": HEAD}


async def test_gitlab_gives_the_file_at_the_commit(git_host: GitHost) -> None:
    git_host.files.put("group/sub/shop", HEAD, "compose.yaml", COMPOSE, provider="gitlab")
    read = await ActivityEnvironment().run(reader(git_host).read_repository_file,
                                           RepositoryFileRequest(
                                               provider="gitlab", repository="group/sub/shop",
                                               ref=HEAD, path="compose.yaml"))
    assert read == COMPOSE


async def test_a_file_not_at_that_commit_is_named_and_not_retried(git_host: GitHost) -> None:
    git_host.files.put("acme/shop", OTHER, "docker-compose.yml", COMPOSE)
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(reader(git_host).read_repository_file,
                                        RepositoryFileRequest(repository="acme/shop",
                                                              ref=HEAD,
                                                              path="docker-compose.yml"))
    assert caught.value.non_retryable and caught.value.type == GIT_HOST_REJECTED
    assert caught.value.message == ("there is no file docker-compose.yml of acme/shop at "
                                 f"{HEAD[:12]}")


async def test_without_credentials_the_error_says_what_to_set(git_host: GitHost) -> None:
    with pytest.raises(ApplicationError, match="PREVIEW_GITHUB_TOKEN"):
        await ActivityEnvironment().run(reader(git_host, token=None).read_repository_file,
                                        RepositoryFileRequest(repository="acme/shop",
                                                              ref=HEAD, path="c.yml"))


# -- a folder (a chart of the repository) -----------------------------------------------

HELLO = Path(__file__).parents[2] / "examples" / "charts" / "hello"
BINARY = bytes(range(256)) * 3  # a vendored subchart's .tgz is bytes, not text


def unpacked(folder: RepositoryFolder) -> dict[str, bytes]:
    packed = base64.b64decode(folder.archive)
    assert hashlib.sha256(packed).hexdigest() == folder.digest
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()}


def expected() -> dict[str, bytes]:
    files = {f.relative_to(HELLO).as_posix(): f.read_bytes()
             for f in HELLO.rglob("*") if f.is_file()}
    return files | {"charts/common-1.0.0.tgz": BINARY}


def put_chart(git_host: GitHost, commit: str, provider: str = "github",
              repository: str = "acme/shop") -> None:
    git_host.files.put_folder(repository, commit, "deploy/chart", HELLO, provider)
    git_host.files.put(repository, commit, "deploy/chart/charts/common-1.0.0.tgz", BINARY,
                       provider)
    git_host.files.put(repository, commit, "deploy/chart-notes.md", "not in the folder",
                       provider)


async def read_folder(git_host: GitHost, provider: str = "github", *, ref: str = HEAD,
                      repository: str = "acme/shop", path: str = "deploy/chart",
                      caps: dict[str, int] | None = None) -> RepositoryFolder:
    request = RepositoryFolderRequest.model_validate({
        "provider": provider, "repository": repository, "ref": ref, "path": path,
        **(caps or {})})
    folder: RepositoryFolder = await ActivityEnvironment().run(
        reader(git_host).read_repository_folder, request)
    return folder


async def refusal(git_host: GitHost, provider: str = "github", path: str = "deploy/chart",
                  caps: dict[str, int] | None = None) -> str:
    with pytest.raises(ApplicationError) as caught:
        await read_folder(git_host, provider, path=path, caps=caps)
    assert caught.value.non_retryable and caught.value.type == GIT_HOST_REJECTED
    return caught.value.message


async def test_github_gives_every_file_of_the_folder_at_the_commit(git_host: GitHost) -> None:
    put_chart(git_host, HEAD)
    git_host.files.put("acme/shop", OTHER, "deploy/chart/Chart.yaml", "other commit\n")
    folder = await read_folder(git_host)
    assert unpacked(folder) == expected()  # subfolders, bytes kept, nothing beside it
    assert (folder.path, folder.files) == ("deploy/chart", len(expected()))
    assert folder.size == sum(len(b) for b in expected().values())
    listings = [c.path for c in git_host.calls_to("GET", "/contents/")
                if c.path.rsplit("/", 1)[-1] in ("chart", "templates", "tests", "charts")]
    assert sorted(listings) == sorted(f"/repos/acme/shop/contents/deploy/chart{sub}" for sub in
                                      ("", "/charts", "/templates", "/templates/tests"))
    assert {c.query["ref"] for c in git_host.calls_to("GET", "/contents/")} == {HEAD}


async def test_the_same_files_pack_to_the_same_bytes_on_either_host(git_host: GitHost) -> None:
    put_chart(git_host, HEAD)
    put_chart(git_host, HEAD, provider="gitlab", repository="group/sub/shop")
    github = await read_folder(git_host)
    gitlab = await read_folder(git_host, "gitlab", repository="group/sub/shop")
    assert gitlab == github.model_copy(update={})  # archive, digest, counts: identical
    [tree] = git_host.calls_to("GET", "/repository/tree")
    assert tree.query["path"] == "deploy/chart" and tree.query["recursive"] == "true"
    # One file changed at another commit: another digest (a redeploy re-renders it).
    put_chart(git_host, OTHER)
    git_host.files.put("acme/shop", OTHER, "deploy/chart/values.yaml", "replicas: 2\n")
    assert (await read_folder(git_host, ref=OTHER)).digest != github.digest


async def test_gitlab_follows_the_tree_across_pages(git_host: GitHost) -> None:
    git_host.max_per_page = 3
    put_chart(git_host, HEAD, provider="gitlab")
    folder = await read_folder(git_host, "gitlab")
    assert unpacked(folder) == expected()
    assert len(git_host.calls_to("GET", "/repository/tree")) > 3


@pytest.mark.parametrize("provider", ["github", "gitlab"])
async def test_a_folder_not_at_that_commit_is_named(git_host: GitHost, provider: str) -> None:
    put_chart(git_host, OTHER, provider)
    assert await refusal(git_host, provider) == (
        f"there is no folder deploy/chart of acme/shop at {HEAD[:12]}")


async def test_a_file_given_as_the_folder_is_named(git_host: GitHost) -> None:
    put_chart(git_host, HEAD)
    assert await refusal(git_host, path="deploy/chart/Chart.yaml") == (
        f"deploy/chart/Chart.yaml of acme/shop at {HEAD[:12]} is not a folder")


@pytest.mark.parametrize("provider", ["github", "gitlab"])
async def test_a_symbolic_link_in_the_folder_is_refused_naming_it(
        git_host: GitHost, provider: str) -> None:
    put_chart(git_host, HEAD, provider)
    git_host.files.put("acme/shop", HEAD, "deploy/chart/templates/secret.yaml",
                       Link("../../../.env"), provider)
    assert await refusal(git_host, provider) == (
        f"deploy/chart/templates/secret.yaml of acme/shop at {HEAD[:12]} is a symbolic link; "
        "a chart folder is read as plain files")


async def test_a_folder_too_big_by_its_listing_is_refused_before_any_download(
        git_host: GitHost) -> None:
    put_chart(git_host, HEAD)
    git_host.files.put("acme/shop", HEAD, "deploy/chart/files/dump.sql", b"x" * (2 << 20))
    assert await refusal(git_host) == (f"deploy/chart of acme/shop at {HEAD[:12]} holds more "
                                       "than 1048576 bytes; at most that is read")
    folders = {f"/repos/acme/shop/contents/deploy/chart{sub}" for sub in
               ("", "/charts", "/files", "/templates", "/templates/tests")}
    asked = {c.path for c in git_host.calls_to("GET", "/contents/")}
    assert asked == folders  # the folders' listings, not one file


@pytest.mark.parametrize(("caps", "says"), [
    ({"max_files": 9}, "has more than 9 files; at most that many are read"),
    ({"max_bytes": 1000}, "holds more than 1000 bytes; at most that is read"),
    ({"max_packed_bytes": 500}, "packs to"),
])
async def test_a_folder_past_a_cap_is_refused_naming_it(
        git_host: GitHost, caps: dict[str, int], says: str) -> None:
    put_chart(git_host, HEAD)
    assert len(expected()) == 10
    message = await refusal(git_host, caps=caps)
    assert message.startswith(f"deploy/chart of acme/shop at {HEAD[:12]} {says}")
    if "max_packed_bytes" in caps:
        assert "past the 500 a preview carries in its history" in message


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.[a-z]{1,4}",
                                     fullmatch=True), st.binary(max_size=300), max_size=8))
def test_packing_keeps_every_file_and_gives_the_same_bytes_for_the_same_files(
        files: dict[str, bytes]) -> None:
    packed = pack_folder(files)
    assert pack_folder(dict(reversed(list(files.items())))) == packed  # order-free
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        members = tar.getmembers()
        assert {m.name: tar.extractfile(m).read() for m in members} == files  # type: ignore[union-attr]
        assert all((m.mtime, m.uid, m.gid, m.mode) == (0, 0, 0, 0o644) for m in members)
