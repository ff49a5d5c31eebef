"""Container images for the local stack's real node, built here without Docker and
without a base image: each is one layer that Python's tarfile writes (fixed mtimes, uid
and gid 0, sorted entries, so the same input gives the same digest), a config, and an
OCI image layout that `crane push` sends to the registry (stack/registry.py).

- the demo application (examples/demo: one static Go binary, three roles) as
  `<host>/hello/{web,api,worker}:<commit>`: the local stack playing CI for a PR's commit;
- Redis: Debian's `redis-server` with every library `ldd` lists and the loader;
- the pod sandbox ("pause") image: stack/go/pause, a static Go program of ours.

Why a layout and `crane push`, not `crane append` then `crane mutate`: that pair pushes
the tag twice, and between the two it names an image with no entrypoint and no user,
which a node (or the engine's image check) may pull. One push moves the tag once, after
every blob is there; re-pushing the same image is a no-op for the registry.

    python -m stack.images demo --registry 127.0.0.1:5000 --commit 0123abc
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stack.registry import crane

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "examples" / "demo"
PAUSE_DIR = ROOT / "stack" / "go" / "pause"
DEMO_APPS = ("web", "api", "worker")
DEMO_USER = "65532:65532"  # numeric, so the kubelet can check runAsNonRoot
PAUSE_USER = "65535:65535"
REDIS_USER = "999:999"  # the engine runs the cache as 999 (activities/kubernetes/cache.py)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# The node is this machine: images are for its architecture, named as Go and OCI do.
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _log(msg: str) -> None:
    print(f"[stack.images] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Layer:
    """A layer blob written by write_layer, as a manifest and a config name it."""

    digest: str  # of the gzip blob
    diff_id: str  # of the tar inside it
    size: int


def _write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_layer(files: Mapping[str, Path], blobs: Path) -> Layer:
    """A gzip'd tar layer holding `files` (path in the image → file here, its mode kept,
    symlinks followed) and their parent folders, stored in `blobs` by digest."""
    entries: dict[str, Path | None] = {}  # path in the image → file here (None: a folder)
    for name, source in files.items():
        path = PurePosixPath(name.lstrip("/"))
        for parent in path.parents:
            if str(parent) != ".":
                entries.setdefault(str(parent), None)
        entries[str(path)] = source
    blobs.mkdir(parents=True, exist_ok=True)
    plain, zipped = blobs / f".layer-{os.getpid()}.tar", blobs / f".layer-{os.getpid()}.gz"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            _add(tar, name, entries[name])
    diff_id = hashlib.sha256()
    # filename="" and mtime=0: the gzip header holds neither, so digests repeat.
    with (open(plain, "rb") as tar_file, open(zipped, "wb") as raw,
          gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz):
        while chunk := tar_file.read(1 << 20):
            diff_id.update(chunk)
            gz.write(chunk)
    plain.unlink()
    with open(zipped, "rb") as blob:
        digest = hashlib.file_digest(blob, "sha256").hexdigest()
    size = zipped.stat().st_size
    zipped.rename(blobs / digest)
    return Layer(digest=f"sha256:{digest}", diff_id=f"sha256:{diff_id.hexdigest()}", size=size)


def _add(tar: tarfile.TarFile, name: str, source: Path | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if source is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    stat = source.stat()  # follows symlinks: the image gets the file itself
    info.size, info.mode = stat.st_size, stat.st_mode & 0o755
    with open(source, "rb") as content:
        tar.addfile(info, content)


def push_image(ref: str, layers: list[Layer], config: Mapping[str, Any], blobs: Path,
               *, docker_config_dir: Path | None = None) -> str:
    """Push an image of `layers` (already in `blobs`) with `config` (the OCI config's
    `config` part) as `ref`; its digest. The OCI layout shares the `blobs` folder."""
    image_config = {
        "architecture": ARCH, "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": "stack/images.py"} for _ in layers],
    }
    config_digest, config_size = _write_blob(blobs, _json(image_config))
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    }
    manifest_digest, manifest_size = _write_blob(blobs, _json(manifest))
    with tempfile.TemporaryDirectory(prefix="oci-layout-") as layout:
        root = Path(layout)
        (root / "blobs").mkdir()
        (root / "blobs" / "sha256").symlink_to(blobs.resolve())
        (root / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        (root / "index.json").write_bytes(_json({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": MANIFEST_TYPE, "digest": manifest_digest,
                           "size": manifest_size}]}))
        crane(["push", str(root), ref], docker_config_dir=docker_config_dir, timeout=300)
    _log(f"pushed {ref} ({sum(layer.size for layer in layers) / 1e6:.1f} MB, "
         f"{manifest_digest[:19]})")
    return manifest_digest


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _go_build(module: Path, output: Path, ldflags: str) -> Path:
    """A static binary of the module's main package (the Go build cache makes repeats
    quick); dependencies come from the module proxy, checked against go.sum."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the `go` command is needed to build the images (Go ≥ 1.26)")
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": ARCH,
           "GOTOOLCHAIN": "local"}
    proc = subprocess.run(
        [go, "build", "-mod=readonly", "-trimpath", "-ldflags", ldflags,
         "-o", str(output.resolve()), "."],
        cwd=module, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"go build in {module} failed: {proc.stderr[-3000:]}")
    return output


def _check_tag(value: str, what: str) -> str:
    if not TAG.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use letters, digits, '_', '.', '-' (≤ 128)")
    return value


def build_demo(commit: str, out_dir: Path) -> Path:
    """Build examples/demo into `out_dir/demo` with `commit` stamped (`demo version`
    prints it, and every role reports it); the binary's path."""
    _check_tag(commit, "commit")  # also keeps -ldflags a single, quote-free word
    return _go_build(DEMO_DIR, Path(out_dir) / "demo", f"-s -w -X main.commit={commit}")


def build_pause(out_dir: Path) -> Path:
    """Build stack/go/pause into `out_dir/pause`; the binary's path."""
    return _go_build(PAUSE_DIR, Path(out_dir) / "pause", "-s -w")


def push_demo_images(registry_host: str, commit: str, repository_prefix: str = "hello",
                     *, docker_config_dir: Path | None = None) -> dict[str, str]:
    """Build the demo for `commit` once and push it as web, api and worker (one shared
    layer, entrypoint `/demo <app>`, numeric non-root user); app → image reference."""
    _check_tag(commit, "commit")
    refs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="demo-image-") as work:
        binary = build_demo(commit, Path(work))
        blobs = Path(work) / "blobs"
        layer = write_layer({"demo": binary}, blobs)
        for app in DEMO_APPS:
            ref = f"{registry_host}/{repository_prefix}/{app}:{commit}"
            push_image(ref, [layer], {
                "Entrypoint": ["/demo", app], "User": DEMO_USER, "Env": [PATH_ENV],
                "WorkingDir": "/",
                "Labels": {"org.opencontainers.image.revision": commit,
                           "org.opencontainers.image.title": f"hello-world {app}"},
            }, blobs, docker_config_dir=docker_config_dir)
            refs[app] = ref
    return refs


def ldd_paths(binary: Path) -> list[str]:
    """The absolute paths of every shared library `ldd` lists for `binary`, and of the
    dynamic loader, as listed (not resolved: the loader looks them up by these)."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    paths: list[str] = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise RuntimeError(f"{binary}: a library is missing: {line.strip()}")
        target = line.split("=>", 1)[1] if "=>" in line else line
        match = re.match(r"\s*(/\S+)", target)
        if match:  # linux-vdso.so.1 has no file: the kernel provides it
            paths.append(match.group(1))
    return paths


def redis_files() -> dict[str, Path]:
    """What the Redis image holds: redis-server (under that name: Redis picks its mode
    from argv[0], and Debian's is a link to redis-check-rdb), its libraries, the loader."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: "
                           "apt-get install -y --no-install-recommends redis-server")
    server = Path(found)
    files = {path: Path(path) for path in ldd_paths(server)}
    files[str(server)] = server
    return files


def redis_version() -> str:
    """The version of Debian's redis-server package as an image tag (no epoch; '~' → '_')."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "redis-server"],
                          capture_output=True, text=True, check=True)
    version = proc.stdout.strip().split(":", 1)[-1]
    return _check_tag(re.sub(r"[^A-Za-z0-9_.-]", "_", version), "redis-server version")


def push_redis_image(registry_host: str, *, repository: str = "library/redis",
                     docker_config_dir: Path | None = None) -> str:
    """Push Debian's redis-server as `<host>/<repository>:<package version>` and tag it
    `<major>.<minor>` too (what a blueprint names, e.g. `library/redis:7.0`); user 999 and
    PATH set, so `redis-server --requirepass X --save '' --appendonly no` runs. Its ref."""
    version = redis_version()
    ref = f"{registry_host}/{repository}:{version}"
    with tempfile.TemporaryDirectory(prefix="redis-image-") as work:
        blobs = Path(work) / "blobs"
        layer = write_layer(redis_files(), blobs)
        push_image(ref, [layer], {
            "Entrypoint": ["redis-server"], "User": REDIS_USER, "Env": [PATH_ENV],
            "WorkingDir": "/", "ExposedPorts": {"6379/tcp": {}},
        }, blobs, docker_config_dir=docker_config_dir)
    minor = ".".join(version.split("-")[0].split(".")[:2])
    crane(["tag", ref, minor], docker_config_dir=docker_config_dir)
    return ref


def push_pause_image(registry_host: str, *, repository: str = "pause",
                     docker_config_dir: Path | None = None) -> str:
    """Push the pod sandbox image as `<host>/<repository>:<first 12 hex of its layer>`
    (the tag changes exactly when the program does); its reference."""
    with tempfile.TemporaryDirectory(prefix="pause-image-") as work:
        blobs = Path(work) / "blobs"
        layer = write_layer({"pause": build_pause(Path(work))}, blobs)
        ref = f"{registry_host}/{repository}:{layer.diff_id.removeprefix('sha256:')[:12]}"
        push_image(ref, [layer], {"Entrypoint": ["/pause"], "User": PAUSE_USER,
                                  "Env": [PATH_ENV], "WorkingDir": "/"},
                   blobs, docker_config_dir=docker_config_dir)
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", choices=["demo", "redis", "pause"])
    parser.add_argument("--registry", required=True, help="registry host[:port]")
    parser.add_argument("--commit", help="the commit the demo images are built for")
    args = parser.parse_args(argv)
    if args.image == "demo":
        if not args.commit:
            parser.error("demo needs --commit")
        for ref in push_demo_images(args.registry, args.commit).values():
            print(ref)
    else:
        print(push_redis_image(args.registry) if args.image == "redis"
              else push_pause_image(args.registry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
