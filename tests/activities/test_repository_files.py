"""A file of the pull request's head commit (a blueprint's Compose file), from the local
GitHub and GitLab stand-ins: its text, whatever the host's base64 wrapping, a clear error
for a file that is not at that commit, and none of the host's calls outside its API."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git_host import GIT_HOST_REJECTED
from domain.feedback import RepositoryFileRequest
from tests.activities.test_git_host import make
from tests.plugins.git_host import GitHost

COMPOSE = "services:\n  web:\n    image: registry.local/shop/web\n" + "# é\n" * 40
HEAD, OTHER = "a1b2c3d4e5f6a7b8c9d0", "0f0f0f0f0f0f0f0f0f0f"


async def test_github_gives_the_file_at_the_commit(git_host: GitHost) -> None:
    git_host.files.put("acme/shop", HEAD, "deploy/docker-compose.yml", COMPOSE)
    git_host.files.put("acme/shop", OTHER, "deploy/docker-compose.yml", "services: {}\n")
    read = await ActivityEnvironment().run(make(git_host).read_repository_file,
                                           RepositoryFileRequest(
                                               repository="acme/shop", ref=HEAD,
                                               path="deploy/docker-compose.yml"))
    assert read == COMPOSE  # decoded from GitHub's 60-column base64, UTF-8 kept
    [call] = git_host.calls_to("GET", "/contents/")
    assert call.path == "/repos/acme/shop/contents/deploy/docker-compose.yml"
    assert call.query == {"ref": HEAD}


async def test_gitlab_gives_the_file_at_the_commit(git_host: GitHost) -> None:
    git_host.files.put("group/sub/shop", HEAD, "compose.yaml", COMPOSE, provider="gitlab")
    read = await ActivityEnvironment().run(make(git_host).read_repository_file,
                                           RepositoryFileRequest(
                                               provider="gitlab", repository="group/sub/shop",
                                               ref=HEAD, path="compose.yaml"))
    assert read == COMPOSE


async def test_a_file_not_at_that_commit_is_named_and_not_retried(git_host: GitHost) -> None:
    git_host.files.put("acme/shop", OTHER, "docker-compose.yml", COMPOSE)
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(make(git_host).read_repository_file,
                                        RepositoryFileRequest(repository="acme/shop",
                                                              ref=HEAD,
                                                              path="docker-compose.yml"))
    assert caught.value.non_retryable and caught.value.type == GIT_HOST_REJECTED
    assert caught.value.message == ("there is no file docker-compose.yml of acme/shop at "
                                 f"{HEAD[:12]}")


async def test_without_credentials_the_error_says_what_to_set(git_host: GitHost) -> None:
    with pytest.raises(ApplicationError, match="PREVIEW_GITHUB_TOKEN"):
        await ActivityEnvironment().run(make(git_host, token=None).read_repository_file,
                                        RepositoryFileRequest(repository="acme/shop",
                                                              ref=HEAD, path="c.yml"))
