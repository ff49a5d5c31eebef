"""Files of repositories at commits, as the Git host stand-in (git_host.py) serves them:
GitHub's contents API (`GET /repos/{owner}/{repo}/contents/{path}?ref=`: a file's
content base64-encoded, a folder's entries one level deep) and GitLab's repository files
API (`GET /projects/:id/repository/files/:file_path?ref=`) and tree API (`GET
/projects/:id/repository/tree?path=&ref=&recursive=true`, paginated), and 404 for a path
that is not there at that commit."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

Reply = tuple[int, dict[str, str], Any]
Pager = Callable[[list[dict[str, Any]], re.Match[str], dict[str, str], int], Reply]


@dataclass(frozen=True)
class Link:
    """A symbolic link in the repository."""

    target: str


class RepositoryFiles:
    def __init__(self, base_url: Callable[[], str], page: Pager) -> None:
        self._base_url = base_url
        self._page = page
        # (provider, repository, commit, path) → content
        self._files: dict[tuple[str, str, str, str], str | bytes | Link] = {}

    def put(self, repository: str, commit: str, path: str, content: str | bytes | Link,
            provider: str = "github") -> None:
        self._files[(provider, repository, commit, path)] = content

    def put_folder(self, repository: str, commit: str, path: str, folder: Path,
                   provider: str = "github", without: Collection[str] = ()) -> None:
        """Every file under a local folder (but those named in `without`, relative to
        it), as the repository's `path` at `commit`."""
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.relative_to(folder).as_posix() not in without:
                self.put(repository, commit, f"{path}/{file.relative_to(folder).as_posix()}",
                         file.read_bytes(), provider)

    def clear(self) -> None:
        self._files.clear()

    def routes(self, gh: str, gl: str) -> list[tuple[str, str, Callable[..., Reply]]]:
        return [(gh + r"/contents/(?P<path>.+)$", "GET", self._github),
                (gl + r"/repository/files/(?P<path>[^/]+)$", "GET", self._gitlab),
                (gl + r"/repository/tree$", "GET", self._gitlab_tree)]

    def _under(self, provider: str, repository: str, commit: str, folder: str,
               ) -> dict[str, str | bytes | Link]:
        """Path → content of every file under `folder` at that commit."""
        return {path: content for (p, r, c, path), content in self._files.items()
                if (p, r, c) == (provider, repository, commit)
                and path.startswith(f"{folder}/")}

    def _github(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        repository, path = f"{m['owner']}/{m['name']}", unquote(m["path"]).rstrip("/")
        ref = query.get("ref", "")
        content = self._files.get(("github", repository, ref, path))
        if content is None:
            under = self._under("github", repository, ref, path)
            if not under:
                return 404, {}, {"message": "Not Found", "documentation_url":
                                 "https://docs.github.com/rest/repos/contents#get-repository-content"}
            children: dict[str, str | bytes | Link | None] = {}  # None: a folder
            for child, value in sorted(under.items()):
                first, _, rest = child.removeprefix(f"{path}/").partition("/")
                children[f"{path}/{first}"] = None if rest else value
            return 200, {}, [self._github_entry(repository, ref, child, value)
                             for child, value in children.items()]
        entry = self._github_entry(repository, ref, path, content)
        if isinstance(content, Link):
            return 200, {}, {**entry, "target": content.target}
        raw = content.encode() if isinstance(content, str) else content
        return 200, {}, {**entry, "encoding": "base64",
                         "content": base64.encodebytes(raw).decode()}  # wrapped at 60 columns

    def _github_entry(self, repository: str, ref: str, path: str,
                      content: str | bytes | Link | None) -> dict[str, Any]:
        """What GitHub says of an entry in a listing (no content)."""
        kind = ("dir" if content is None else "symlink" if isinstance(content, Link)
                else "file")
        raw = (b"" if content is None else content.target.encode()
               if isinstance(content, Link) else
               content.encode() if isinstance(content, str) else content)
        sha = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()  # git's blob id
        url = f"{self._base_url()}/repos/{repository}/contents/{path}?ref={ref}"
        tree, objects = ("tree", "trees") if kind == "dir" else ("blob", "blobs")
        html = f"https://github.com/{repository}/{tree}/{ref}/{path}"
        git = f"{self._base_url()}/repos/{repository}/git/{objects}/{sha}"
        return {
            "type": kind, "size": 0 if kind == "dir" else len(raw),
            "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha,
            "url": url, "git_url": git, "html_url": html,
            "download_url": None if kind == "dir" else
            f"https://raw.githubusercontent.com/{repository}/{ref}/{path}",
            "_links": {"self": url, "git": git, "html": html},
        }

    def _gitlab(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        project, path = unquote(m["project"]), unquote(m["path"])
        content = self._files.get(("gitlab", project, query.get("ref", ""), path))
        if content is None:
            return 404, {}, {"message": "404 File Not Found"}
        raw = (content.target.encode() if isinstance(content, Link) else
               content.encode() if isinstance(content, str) else content)
        return 200, {}, {
            "file_name": path.rsplit("/", 1)[-1], "file_path": path, "size": len(raw),
            "encoding": "base64", "content": base64.b64encode(raw).decode(),
            "ref": query["ref"], "blob_id": hashlib.sha1(raw).hexdigest(),
            "commit_id": query["ref"], "last_commit_id": query["ref"],
        }

    def _gitlab_tree(self, m: re.Match[str], query: dict[str, str], _: Any) -> Reply:
        project, folder = unquote(m["project"]), query.get("path", "").rstrip("/")
        under = self._under("gitlab", project, query.get("ref", ""), folder)
        if not under:
            exists = ("gitlab", project, query.get("ref", ""), folder) in self._files
            return (200, {}, []) if exists else (404, {}, {"message": "404 Tree Not Found"})
        recursive = query.get("recursive") == "true"
        entries: dict[str, dict[str, Any]] = {}
        for path, content in sorted(under.items()):
            parts = path.removeprefix(f"{folder}/").split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                sub = "/".join([folder, *parts[:depth]])
                if recursive or depth == 1:
                    entries.setdefault(sub, {"id": hashlib.sha1(sub.encode()).hexdigest(),
                                             "name": parts[depth - 1], "type": "tree",
                                             "path": sub, "mode": "040000"})
            if recursive or len(parts) == 1:
                raw = str(content).encode()
                entries[path] = {"id": hashlib.sha1(raw).hexdigest(), "name": parts[-1],
                                 "type": "blob", "path": path,
                                 "mode": "120000" if isinstance(content, Link) else "100644"}
        return self._page(sorted(entries.values(), key=lambda e: str(e["path"])), m, query, 20)
