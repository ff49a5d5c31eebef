"""What a preview reads from the pull request's repository, through the Git host's API
(the engine never clones): the files the PR changes (for path filters), one file at a
commit (a Compose file), and a folder at a commit (a Helm chart), packed.

GitHub: the pull request files API, the contents API (a folder answers its entries,
read one level at a time). GitLab: the merge request diffs API, the repository tree API
(recursive) and the repository files API. A path that is not there at that commit is a
person's error, named and not retried.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import tarfile
from urllib.parse import quote

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.git_host.api import GIT_HOST_REJECTED, Api, GitHostClients, Gone
from domain.contract import LIST_CHANGED_FILES, READ_REPOSITORY_FILE, READ_REPOSITORY_FOLDER
from domain.feedback import (
    ChangedFilesRequest,
    RepositoryFileRequest,
    RepositoryFolder,
    RepositoryFolderRequest,
)

_KINDS = {"symlink": "symbolic link", "submodule": "submodule", "dir": "folder"}


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=GIT_HOST_REJECTED, non_retryable=True)


def pack_folder(files: dict[str, bytes]) -> bytes:
    """A .tar.gz of the files (relative names), the same bytes for the same files: sorted,
    every time and owner zero, mode 0644."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def packed_folder(path: str, files: dict[str, bytes]) -> RepositoryFolder:
    """The folder `path` holding `files` (names relative to it), packed."""
    packed = pack_folder(files)
    return RepositoryFolder(path=path, archive=base64.b64encode(packed).decode(),
                            digest=hashlib.sha256(packed).hexdigest(), files=len(files),
                            size=sum(len(content) for content in files.values()))


class RepositoryActivities(GitHostClients):
    """Reads of the PR's repository; the engine's credentials as for its feedback."""

    @activity.defn(name=LIST_CHANGED_FILES.name)
    async def list_changed_files(self, request: ChangedFilesRequest) -> list[str]:
        """Every path the PR adds, changes, removes or renames (both names of a rename),
        for the blueprint's path filters."""
        async with self.reading(request.provider, request.repository,
                                f"the blueprint of {request.repository} filters by path, and "
                                "the engine has no {provider} credentials to list a pull "
                                "request's files") as api:
            if request.provider == "gitlab":
                items = await api.paginate(f"/projects/{quote(request.repository, safe='')}"
                                           f"/merge_requests/{request.pr_number}/diffs", {})
                names = ("new_path", "old_path")
            else:
                items = await api.paginate(
                    f"/repos/{request.repository}/pulls/{request.pr_number}/files", {})
                names = ("filename", "previous_filename")
        paths = {item[name] for item in items for name in names
                 if isinstance(item.get(name), str)}
        return sorted(paths)[: request.max_files]

    @activity.defn(name=READ_REPOSITORY_FILE.name)
    async def read_repository_file(self, request: RepositoryFileRequest) -> str:
        """A file's text at a commit. A file that is not there is a user's error, named."""
        async with self.reading(request.provider, request.repository,
                                f"the blueprint of {request.repository} reads {request.path} "
                                "from the repository, and the engine has no {provider} "
                                "credentials") as api:
            raw = await _file(api, request, request.path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _refused(f"{_where(request, request.path)} is not UTF-8 text") from None

    @activity.defn(name=READ_REPOSITORY_FOLDER.name)
    async def read_repository_folder(self, request: RepositoryFolderRequest,
                                     ) -> RepositoryFolder:
        """Every file under a folder at a commit, packed (pack_folder). Symbolic links
        and submodules are refused (a chart is plain files), as is a folder past the
        request's caps, naming the cap."""
        folder = request.path.strip("/")
        async with self.reading(request.provider, request.repository,
                                f"the blueprint of {request.repository} reads the folder "
                                f"{folder} from the repository, and the engine has no "
                                "{provider} credentials") as api:
            listed = await _folder_files(api, request, folder)
            if len(listed) > request.max_files:
                raise _refused(f"{_where(request, folder)} has more than {request.max_files} "
                               "files; at most that many are read")
            if sum(listed.values()) > request.max_bytes:  # as the listing says: read nothing
                raise _refused(f"{_where(request, folder)} holds more than "
                               f"{request.max_bytes} bytes; at most that is read")
            names = list(listed)
            files: dict[str, bytes] = {}
            size = 0
            for name in names:
                files[name] = await _file(api, request, f"{folder}/{name}")
                activity.heartbeat(name)
                size += len(files[name])
                if size > request.max_bytes:
                    raise _refused(f"{_where(request, folder)} holds more than "
                                   f"{request.max_bytes} bytes; at most that is read")
        packed = packed_folder(folder, files)
        if packed.packed_size > request.max_packed_bytes:
            raise _refused(
                f"{_where(request, folder)} packs to {packed.packed_size} bytes, past the "
                f"{request.max_packed_bytes} a preview carries in its history: publish it to "
                "a chart registry and name it by reference instead")
        return packed


def _where(request: RepositoryFileRequest, path: str) -> str:
    return f"{path} of {request.repository} at {request.ref[:12]}"


async def _file(api: Api, request: RepositoryFileRequest, path: str) -> bytes:
    """One file's bytes: GitHub's contents API, GitLab's repository files API (both
    answer base64)."""
    if request.provider == "gitlab":
        url = (f"/projects/{quote(request.repository, safe='')}/repository/files/"
               f"{quote(path, safe='')}")
    else:
        url = f"/repos/{request.repository}/contents/{quote(path)}"
    try:
        answer = (await api.request("GET", url, params={"ref": request.ref})).json()
    except Gone:
        raise _refused(f"there is no file {_where(request, path)}") from None
    if not isinstance(answer, dict):
        raise _refused(f"{_where(request, path)} is not a file")
    kind = answer.get("type", "file")
    if kind != "file":  # GitHub lists a submodule as a file in a folder's entries
        raise _refused(f"{_where(request, path)} is a {_KINDS.get(kind, kind)}, not a file")
    if answer.get("encoding") != "base64":  # GitHub: "none" past 1 MB
        raise _refused(f"{_where(request, path)} is larger than the host's API gives "
                       f"({answer.get('size')} bytes)")
    try:
        return base64.b64decode(answer.get("content") or "")
    except binascii.Error:
        raise _refused(f"{_where(request, path)} is not base64, as the host says") from None


async def _folder_files(api: Api, request: RepositoryFolderRequest, folder: str,
                        ) -> dict[str, int]:
    """Every file under the folder (its name relative to it) and its size, as listed
    (0 where the host's listing does not say)."""
    if request.provider == "gitlab":
        try:
            entries = await api.paginate(
                f"/projects/{quote(request.repository, safe='')}/repository/tree",
                {"path": folder, "ref": request.ref, "recursive": "true"})
        except Gone:
            entries = []
        if not entries:  # GitLab answers an empty list for a path that is a file
            raise _refused(f"there is no folder {_where(request, folder)}")
        names: dict[str, int] = {}
        for entry in entries:
            path = str(entry.get("path", ""))
            if entry.get("type") == "tree":
                continue
            if entry.get("type") != "blob" or entry.get("mode") == "120000":
                what = "symlink" if entry.get("mode") == "120000" else "submodule"
                raise _refused(f"{_where(request, path)} is a {_KINDS[what]}; a chart folder "
                               "is read as plain files")
            names[path.removeprefix(f"{folder}/")] = 0  # the tree does not give sizes
        return names
    names = {}
    pending = [folder]
    while pending:
        current = pending.pop(0)
        try:
            listing = (await api.request("GET", f"/repos/{request.repository}/contents/"
                                         f"{quote(current)}", params={"ref": request.ref})
                       ).json()
        except Gone:
            raise _refused(f"there is no folder {_where(request, current)}") from None
        if not isinstance(listing, list):  # a file answers an object
            raise _refused(f"{_where(request, current)} is not a folder")
        for entry in listing:
            path = str(entry.get("path", ""))
            if entry.get("type") == "dir":
                pending.append(path)
            elif entry.get("type") == "file":
                names[path.removeprefix(f"{folder}/")] = int(entry.get("size") or 0)
            else:
                kind = str(entry.get("type"))
                raise _refused(f"{_where(request, path)} is a {_KINDS.get(kind, kind)}; a "
                               "chart folder is read as plain files")
        if len(names) > request.max_files:
            break
    return names
