"""The files a pull request changes, from the local GitHub and GitLab stand-ins: every
page, both names of a rename, and a clear error without credentials."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git_host import GIT_HOST_REJECTED
from domain.feedback import ChangedFilesRequest
from tests.activities.test_git_host import reader
from tests.plugins.git_host import GitHost


async def test_github_files_are_listed_across_pages_with_renames(git_host: GitHost) -> None:
    files = [{"filename": f"services/api/f{i:03}.py", "status": "modified"} for i in range(250)]
    files.append({"filename": "web/new.ts", "previous_filename": "docs/old.ts",
                  "status": "renamed"})
    git_host.set_changed_files("acme/shop", 7, files)
    listed = await ActivityEnvironment().run(
        reader(git_host).list_changed_files, ChangedFilesRequest(repository="acme/shop",
                                                               pr_number=7))
    assert len(listed) == 252 and "docs/old.ts" in listed and "web/new.ts" in listed
    pages = git_host.calls_to("GET", "/pulls/7/files")
    assert len(pages) == 3  # 100 per page: the activity follows every Link


async def test_gitlab_diffs_give_old_and_new_paths(git_host: GitHost) -> None:
    git_host.set_changed_files("group/sub/shop", 3, [
        {"new_path": "README.md", "old_path": "README.md"},
        {"new_path": "api/main.go", "old_path": "api/old.go", "renamed_file": True},
    ], provider="gitlab")
    listed = await ActivityEnvironment().run(
        reader(git_host).list_changed_files,
        ChangedFilesRequest(provider="gitlab", repository="group/sub/shop", pr_number=3))
    assert listed == ["README.md", "api/main.go", "api/old.go"]


async def test_without_credentials_the_error_says_what_to_set(git_host: GitHost) -> None:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(
            reader(git_host, token=None).list_changed_files,
            ChangedFilesRequest(repository="acme/shop", pr_number=1))
    assert caught.value.type == GIT_HOST_REJECTED and caught.value.non_retryable
    assert "PREVIEW_GITHUB_TOKEN" in str(caught.value)
