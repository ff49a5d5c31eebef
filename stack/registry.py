"""A real OCI registry on loopback (the CNCF distribution registry) and `crane` to push
images to it, both built from the Go module proxy into the control plane's cache folder.

They are built like helm (stack/helm.py): a wrapper module, `go build`, an atomic move
into the cache, and only when missing or of another version. The registry runs from a
config file written here: filesystem storage in its state folder, one loopback listener,
no debug listener, no telemetry export, and optionally token authentication (`auth:
token`) trusting the keys of a JWKS file, so a client goes through the registry's Bearer
challenge exactly as with a hosted registry.

    python -m stack.registry build   # prints the folder holding registry and crane
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import yaml

from activities.registry import docker_config_json
from stack import kube
from stack.ports import free_port, stop_group
from stack.processes import set_pdeathsig

DISTRIBUTION_MODULE = "github.com/distribution/distribution/v3"
DISTRIBUTION_VERSION = "v3.1.2"
CRANE_MODULE = "github.com/google/go-containerregistry"
CRANE_VERSION = "v0.22.1"
BINARIES: dict[str, tuple[str, str, str]] = {
    # binary -> (module, version, package)
    "registry": (DISTRIBUTION_MODULE, DISTRIBUTION_VERSION, f"{DISTRIBUTION_MODULE}/cmd/registry"),
    "crane": (CRANE_MODULE, CRANE_VERSION, f"{CRANE_MODULE}/cmd/crane"),
}
LDFLAGS: dict[str, list[str]] = {
    "registry": [f"-X {DISTRIBUTION_MODULE}/version.version={DISTRIBUTION_VERSION}"],
    "crane": [f"-X {CRANE_MODULE}/cmd/crane/cmd.Version={CRANE_VERSION}"],
}


def _log(msg: str) -> None:
    print(f"[stack.registry] {msg}", file=sys.stderr, flush=True)


def binary(name: str) -> Path:
    """Next to kubectl and helm, so one folder on PATH gives them all."""
    return kube.cache_dir() / name


def _stamp(name: str) -> Path:
    # The cache folder is keyed by the control plane's versions, not these.
    return kube.cache_dir() / f"{name}.version"


def _is_built(name: str) -> bool:
    stamp = _stamp(name)
    return (binary(name).is_file() and stamp.is_file()
            and stamp.read_text() == BINARIES[name][1])


def is_built() -> bool:
    return all(_is_built(name) for name in BINARIES)


def build() -> Path:
    """Build the registry and crane into the cache unless there already; return the folder."""
    bin_dir = kube.cache_dir()
    missing = [name for name in BINARIES if not _is_built(name)]
    if not missing:
        return bin_dir
    if shutil.which("go") is None:
        raise RuntimeError("the `go` command is needed to build the registry (Go ≥ 1.26)")
    bin_dir.mkdir(parents=True, exist_ok=True)
    work = kube.cache_root() / "wrappers"
    work.mkdir(parents=True, exist_ok=True)
    for name in missing:
        started = time.monotonic()
        module, version, package = BINARIES[name]
        info = kube.download_module(module, version, work)
        header, _ = kube.parse_gomod(Path(info["GoMod"]).read_text())
        wrap = work / name
        kube.write_wrapper(wrap, name, module, version, {}, header)
        kube.build_group(wrap, {name: package}, LDFLAGS[name], bin_dir)
        _stamp(name).write_text(version)
        _log(f"{name} {version} built in {time.monotonic() - started:.0f}s -> {binary(name)}")
    return bin_dir


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class TokenAuth:
    """The registry's `auth: token` settings: where clients get tokens, and whose keys it
    trusts (a JWKS file; a token's `kid` header names the key that signed it)."""

    realm: str
    service: str
    issuer: str
    jwks: Path


def registry_config(root: Path, port: int, auth: TokenAuth | None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        # No `debug` section: no second listener.
        "http": {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if auth is not None:
        config["auth"] = {"token": {"realm": auth.realm, "service": auth.service,
                                    "issuer": auth.issuer, "jwks": str(auth.jwks)}}
    return config


class Registry:
    """The distribution registry on a free loopback port; all state under state_dir."""

    def __init__(self, state_dir: Path, auth: TokenAuth | None = None,
                 port: int | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port or free_port()
        self.auth = auth
        self.log_path = self.state_dir / "registry.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """What goes before the repository in an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 30.0) -> Self:
        if not binary("registry").is_file():
            raise RuntimeError(f"no registry in {kube.cache_dir()}: run "
                               "`python -m stack.registry build` (or `make registry`)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.state_dir / "config.yml"
        config = registry_config(self.state_dir / "storage", self.port, self.auth)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # autoexport would send spans to an OTLP collector on localhost:4318.
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(binary("registry")), "serve", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.state_dir, env=env, start_new_session=True,
                preexec_fn=set_pdeathsig,  # gone with its stack, even one killed with -9
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"registry exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # 401 with token auth: it answers, so it is up
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"registry did not answer within {timeout}s") from None
                time.sleep(0.05)  # polling a condition with a deadline

    def stop(self) -> None:
        if self._process is not None:
            stop_group(self._process, signal.SIGTERM, timeout=10)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def docker_config(folder: Path, host: str, user: str, password: str) -> Path:
    """A DOCKER_CONFIG folder whose config.json gives crane credentials for one host."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(docker_config_json({host: (user, password)}))
    return folder


def crane(args: list[str], *, docker_config_dir: Path | None = None,
          timeout: float = 60.0) -> str:
    """Run crane (plain HTTP: loopback registries only); its stdout, or RuntimeError."""
    env = {**os.environ}
    if docker_config_dir is not None:
        env["DOCKER_CONFIG"] = str(docker_config_dir)
    proc = subprocess.run([str(binary("crane")), *args, "--insecure"], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"crane {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.registry", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build registry and crane into the cache if missing")
    sub.add_parser("path", help="print the folder that holds them (built or not)")
    args = parser.parse_args(argv)
    print(build() if args.cmd == "build" else kube.cache_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
