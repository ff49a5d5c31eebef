"""stack/images.py against a real registry (token authentication): the demo images of a
commit, Redis from Debian's package and the pause image are pushed with the entrypoint,
numeric user and tag a node needs; what is inside runs (the demo reports its commit;
as root, Redis serves from its own layer in a chroot as uid 999, and pause stops on
SIGTERM and reaps an orphan as PID 1 of a PID namespace); a second push changes nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from stack import images
from stack import registry as stack_registry
from stack.ports import free_port, stop_group
from tests.examples.support import redis_call
from tests.plugins.registry import PUSHER, LoopbackRegistry
from tests.polling import wait_until

COMMIT = "0123456789abcdef0123456789abcdef01234567"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot and PID namespaces need root")


@pytest.fixture(scope="module")
def pusher(registry: LoopbackRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DOCKER_CONFIG with CI's credentials (push and pull) for the registry."""
    if shutil.which("go") is None:
        pytest.skip("no `go` to build the images' programs")
    return stack_registry.docker_config(tmp_path_factory.mktemp("docker"), registry.host,
                                        *PUSHER)


def crane(pusher: Path, *args: str) -> str:
    return stack_registry.crane(list(args), docker_config_dir=pusher)


def config_of(pusher: Path, ref: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(crane(pusher, "config", ref))
    return config


def exported(pusher: Path, ref: str, folder: Path) -> tarfile.TarFile:
    """The image's filesystem as a tar (`crane export`), also written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tar = folder.with_suffix(".tar")
    crane(pusher, "export", ref, str(tar))
    with tarfile.open(tar) as archive:
        archive.extractall(folder, filter="tar")  # as root: uid 0 and modes kept
    return tarfile.open(tar)


def test_demo_images_run_the_commit_as_a_numeric_non_root_user(
        registry: LoopbackRegistry, pusher: Path, tmp_path: Path) -> None:
    prefix = f"ci-{uuid.uuid4().hex[:8]}"
    refs = images.push_demo_images(registry.host, COMMIT, prefix, docker_config_dir=pusher)
    assert refs == {app: f"{registry.host}/{prefix}/{app}:{COMMIT}"
                    for app in ("web", "api", "worker")}
    layers = set()
    for app, ref in refs.items():
        assert crane(pusher, "ls", ref.rsplit(":", 1)[0]).split() == [COMMIT]
        config = config_of(pusher, ref)
        assert config["os"] == "linux" and config["architecture"] in ("amd64", "arm64")
        assert config["config"]["Entrypoint"] == ["/demo", app]
        uid, gid = (int(part) for part in config["config"]["User"].split(":"))
        assert uid == gid == 65532
        assert any(env.startswith("PATH=/") for env in config["config"]["Env"])
        manifest = json.loads(crane(pusher, "manifest", ref))
        layers.add(tuple(layer["digest"] for layer in manifest["layers"]))
    assert len(layers) == 1, "the three images share the one layer"

    with exported(pusher, refs["api"], tmp_path / "api") as tar:
        assert tar.getnames() == ["demo"]
        member = tar.getmember("demo")
        assert member.mode & 0o111 and member.uid == 0 and member.mtime == 0
    stamped = subprocess.run([str(tmp_path / "api" / "demo"), "version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert stamped == COMMIT

    digest = crane(pusher, "digest", refs["web"])
    again = images.push_demo_images(registry.host, COMMIT, prefix, docker_config_dir=pusher)
    assert again == refs and crane(pusher, "digest", refs["web"]) == digest  # same bytes


def test_commits_that_are_no_tag_are_refused() -> None:
    with pytest.raises(ValueError, match="commit"):
        images.push_demo_images("registry.local", "abc -X main.commit=evil")


def test_redis_image_holds_redis_server_and_every_library(
        registry: LoopbackRegistry, pusher: Path, tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is missing: apt-get install -y redis-server")
    repository = f"ci-{uuid.uuid4().hex[:8]}/redis"
    ref = images.push_redis_image(registry.host, repository=repository,
                                  docker_config_dir=pusher)
    version = images.redis_version()
    assert ref == f"{registry.host}/{repository}:{version}"
    minor = ".".join(version.split(".")[:2])  # 7.0.15-1_deb12u10 → 7.0
    assert sorted(crane(pusher, "ls", f"{registry.host}/{repository}").split()) == sorted(
        [version, minor])
    assert crane(pusher, "digest", ref) == crane(pusher, "digest", ref.replace(version, minor))
    config = config_of(pusher, ref)["config"]
    assert config["User"] == "999:999" and any(e.startswith("PATH=") for e in config["Env"])

    libraries = images.ldd_paths(Path(shutil.which("redis-server") or ""))
    assert any("ld-linux" in path for path in libraries), "the loader is listed"
    assert any("libc.so" in path for path in libraries)
    with exported(pusher, ref, tmp_path / "redis") as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert files == {"usr/bin/redis-server", *(p.lstrip("/") for p in libraries)}


@as_root
def test_redis_serves_from_its_own_layer_as_uid_999(
        registry: LoopbackRegistry, pusher: Path, tmp_path: Path) -> None:
    """Nothing from the host but the kernel: if a library were missing, it would not start."""
    chroot = shutil.which("chroot")
    if shutil.which("redis-server") is None or chroot is None:
        pytest.skip("redis-server (apt-get install -y redis-server) and chroot are needed")
    ref = images.push_redis_image(registry.host, docker_config_dir=pusher)
    root = tmp_path / "rootfs"
    exported(pusher, ref, root).close()
    port, password = free_port(), uuid.uuid4().hex
    server = subprocess.Popen(
        [chroot, "--userspec=999:999", str(root), "redis-server", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"],
        env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def answers() -> bytes | None:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                return redis_call(port, password, "PING")
            except OSError:
                return None
        assert wait_until("redis in the chroot", answers) == b"+OK\r\n+PONG\r\n"
        assert redis_call(port, "wrong", "PING").startswith(b"-WRONGPASS")
    finally:
        stop_group(server)


def test_pause_image(registry: LoopbackRegistry, pusher: Path, tmp_path: Path) -> None:
    ref = images.push_pause_image(registry.host, docker_config_dir=pusher)
    config = config_of(pusher, ref)["config"]
    assert config["Entrypoint"] == ["/pause"] and config["User"] == "65535:65535"
    with exported(pusher, ref, tmp_path / "pause") as tar:
        assert tar.getnames() == ["pause"]
    assert images.push_pause_image(registry.host, docker_config_dir=pusher) == ref


def children(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid`: their state letter (Z: a zombie nobody reaped)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = dict(line.split(":\t", 1) for line in
                              (entry / "status").read_text().splitlines() if ":\t" in line)
            except (OSError, ValueError):
                continue
            if status.get("PPid", "").strip() == str(pid):
                found[int(entry.name)] = status["State"].strip()[0]
    return found


@as_root
def test_pause_reaps_orphans_and_stops_on_sigterm_as_pid_1(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("util-linux's unshare and nsenter are needed")
    pause = images.build_pause(tmp_path)
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", str(pause)],
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        pid1 = wait_until("pause as PID 1", lambda: next(iter(children(holder.pid)), None))
        # sh starts a sleep in pause's namespace and leaves: the sleep's parent is PID 1.
        subprocess.run(["nsenter", f"--target={pid1}", "--pid", "--", "sh", "-c",
                        "sleep 300 & exit 0"], check=True, timeout=10)
        orphan = wait_until("the orphan under pause", lambda: next(iter(children(pid1)), None))
        os.kill(orphan, signal.SIGKILL)
        wait_until("pause to reap the killed orphan", lambda: orphan not in children(pid1))
        # PID 1 of a namespace gets no signal it has no handler for: a clean exit shows it.
        os.kill(pid1, signal.SIGTERM)
        assert holder.wait(timeout=10) == 0
    finally:
        stop_group(holder, signal.SIGKILL)


def test_layers_are_deterministic(tmp_path: Path) -> None:
    program = tmp_path / "program"
    program.write_bytes(b"#!/bin/sh\n")
    program.chmod(0o755)
    first = images.write_layer({"/usr/bin/program": program}, tmp_path / "one")
    os.utime(program, (1, 1))  # the file's own time must not reach the layer
    second = images.write_layer({"/usr/bin/program": program}, tmp_path / "two")
    assert first == second
    blob = (tmp_path / "one" / first.digest.removeprefix("sha256:")).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = [(m.name, m.type, oct(m.mode), m.uid, m.mtime) for m in tar.getmembers()]
    assert members == [("usr", tarfile.DIRTYPE, "0o755", 0, 0),
                       ("usr/bin", tarfile.DIRTYPE, "0o755", 0, 0),
                       ("usr/bin/program", tarfile.REGTYPE, "0o755", 0, 0)]
