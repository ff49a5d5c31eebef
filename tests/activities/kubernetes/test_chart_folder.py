"""A chart folder as the Kubernetes worker receives it (activities/kubernetes/charts.py
unpack_chart): the digest says it is the folder that was read, not who packed it, so
what unpacks is checked on its own: nothing but plain files, nothing outside the folder,
and no dependency that would make the worker's helm read the worker's own files."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import INVALID_INPUT
from activities.git_host.repository import packed_folder
from activities.kubernetes.charts import unpack_chart
from domain.feedback import RepositoryFolder
from domain.naming import Ownership
from domain.resources import ChartSpec

CHART_YAML = b"apiVersion: v2\nname: shop\nversion: 1.0.0\n"


def spec(folder: RepositoryFolder) -> ChartSpec:
    return ChartSpec(owner=Ownership(environment="shop-pr-1"), namespace="shop-pr-1",
                     name="shop", folder=folder)


def crafted(members: list[tarfile.TarInfo]) -> RepositoryFolder:
    """A folder whose archive holds these members (as only a forger would pack it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("Chart.yaml")
        info.size = len(CHART_YAML)
        tar.addfile(info, io.BytesIO(CHART_YAML))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    good = packed_folder("deploy/chart", {"Chart.yaml": CHART_YAML})
    raw = buffer.getvalue()
    return good.model_copy(update={"archive": base64.b64encode(raw).decode(),
                                   "digest": hashlib.sha256(raw).hexdigest()})


def refused(folder: RepositoryFolder, into: Path) -> str:
    with pytest.raises(ApplicationError) as caught:
        unpack_chart(spec(folder), str(into / "chart"))
    assert caught.value.non_retryable and caught.value.type == INVALID_INPUT
    return caught.value.message


def test_a_folder_as_read_unpacks_whole(tmp_path: Path) -> None:
    files = {"Chart.yaml": CHART_YAML, "templates/a.yaml": b"kind: ConfigMap\n",
             "charts/sub-1.0.0.tgz": bytes(range(256))}
    into = Path(unpack_chart(spec(packed_folder("deploy/chart", files)), str(tmp_path / "c")))
    assert {p.relative_to(into).as_posix(): p.read_bytes()
            for p in into.rglob("*") if p.is_file()} == files


def test_a_member_outside_the_folder_is_refused_and_nothing_lands_there(tmp_path: Path) -> None:
    escape = tarfile.TarInfo("../escaped.yaml")
    escape.size = 3
    message = refused(crafted([escape]), tmp_path)
    assert message.startswith("chart shop: its folder does not unpack: ")
    assert not (tmp_path / "escaped.yaml").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_anything_but_plain_files_is_refused(tmp_path: Path, kind: bytes) -> None:
    odd = tarfile.TarInfo("templates/secret.yaml")
    odd.type, odd.linkname = kind, "Chart.yaml"
    assert refused(crafted([odd]), tmp_path) == (
        "chart shop: its folder holds templates/secret.yaml, which is not a plain file")


@pytest.mark.parametrize("repository", ["file:///etc", "file://../../worker",
                                        "file://charts/../../.."])
def test_a_dependency_outside_the_folder_is_refused(tmp_path: Path, repository: str) -> None:
    chart = CHART_YAML + (f"dependencies:\n  - name: x\n    version: 1.0.0\n"
                          f"    repository: {repository}\n").encode()
    folder = packed_folder("deploy/chart", {"Chart.yaml": chart})
    assert refused(folder, tmp_path) == (
        f"chart shop: its dependency {repository} is outside deploy/chart: keep it in the "
        "folder (or its charts/)")
    inside = packed_folder("deploy/chart", {"Chart.yaml": chart.replace(
        repository.encode(), b"file://charts/x")})
    unpack_chart(spec(inside), str(tmp_path / "ok"))  # a subchart in the folder is fine
