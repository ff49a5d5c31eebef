"""Files of repositories at commits, as the Git host stand-in (git_host.py) serves them:
GitHub's contents API (`GET /repos/{owner}/{repo}/contents/{path}?ref=`) and GitLab's
repository files API (`GET /projects/:id/repository/files/:file_path?ref=`), both with
the content base64-encoded, and 404 for a file that is not there at that commit."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

Reply = tuple[int, dict[str, str], Any]


class RepositoryFiles:
    def __init__(self, base_url: Callable[[], str]) -> None:
        self._base_url = base_url
        # (provider, repository, commit, path) → text
        self._files: dict[tuple[str, str, str, str], str] = {}

    def put(self, repository: str, commit: str, path: str, text: str,
            provider: str = "github") -> None:
        self._files[(provider, repository, commit, path)] = text

    def clear(self) -> None:
        self._files.clear()

    def routes(self, gh: str, gl: str) -> list[tuple[str, str, Callable[..., Reply]]]:
        return [(gh + r"/contents/(?P<path>.+)$", "GET", self._github),
                (gl + r"/repository/files/(?P<path>[^/]+)$", "GET", self._gitlab)]

    def _github(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        repository, path = f"{m['owner']}/{m['name']}", unquote(m["path"])
        text = self._files.get(("github", repository, query.get("ref", ""), path))
        if text is None:
            return 404, {}, {"message": "Not Found", "documentation_url":
                             "https://docs.github.com/rest/repos/contents#get-repository-content"}
        raw = text.encode()
        sha = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()  # git's blob id
        url = f"{self._base_url()}/repos/{repository}/contents/{path}?ref={query['ref']}"
        html = f"https://github.com/{repository}/blob/{query['ref']}/{path}"
        git = f"{self._base_url()}/repos/{repository}/git/blobs/{sha}"
        return 200, {}, {
            "type": "file", "encoding": "base64", "size": len(raw),
            "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha,
            "content": base64.encodebytes(raw).decode(),  # GitHub wraps it at 60 columns
            "url": url, "git_url": git, "html_url": html,
            "download_url": f"https://raw.githubusercontent.com/{repository}/"
                            f"{query['ref']}/{path}",
            "_links": {"self": url, "git": git, "html": html},
        }

    def _gitlab(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        project, path = unquote(m["project"]), unquote(m["path"])
        text = self._files.get(("gitlab", project, query.get("ref", ""), path))
        if text is None:
            return 404, {}, {"message": "404 File Not Found"}
        raw = text.encode()
        return 200, {}, {
            "file_name": path.rsplit("/", 1)[-1], "file_path": path, "size": len(raw),
            "encoding": "base64", "content": base64.b64encode(raw).decode(),
            "ref": query["ref"], "blob_id": hashlib.sha1(raw).hexdigest(),
            "commit_id": query["ref"], "last_commit_id": query["ref"],
        }
