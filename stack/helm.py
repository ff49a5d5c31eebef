"""Helm, built from the Go module proxy into the control plane's cache folder.

The chart under deploy/helm is linted and rendered with it in the tests. It is built
like the control plane's binaries (stack/kube.py: a wrapper module, `go build`, an
atomic move into the cache), and only when missing or of another version.

    python -m stack.helm build   # prints the binary's path
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import kube

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
HELM_PACKAGE = f"{HELM_MODULE}/cmd/helm"


def _log(msg: str) -> None:
    print(f"[stack.helm] {msg}", file=sys.stderr, flush=True)


def helm_path() -> Path:
    """Next to kubectl, so one folder on PATH gives both."""
    return kube.cache_dir() / "helm"


def _stamp() -> Path:
    # The cache folder is keyed by the control plane's versions, not helm's.
    return kube.cache_dir() / "helm.version"


def is_built() -> bool:
    stamp = _stamp()
    return helm_path().is_file() and stamp.is_file() and stamp.read_text() == HELM_VERSION


def _ldflags(gomod: str) -> list[str]:
    """What helm's Makefile sets: its version, and the Kubernetes version that `helm
    template` and `helm lint` assume (the client-go it is built with; else 1.20)."""
    flags = [f"-X {HELM_MODULE}/internal/version.version={HELM_VERSION}"]
    found = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", gomod, re.MULTILINE)
    if found:
        for package in ("pkg/lint/rules", "pkg/chartutil"):
            flags += [f"-X {HELM_MODULE}/{package}.k8sVersionMajor=1",
                      f"-X {HELM_MODULE}/{package}.k8sVersionMinor={found.group(1)}"]
    return flags


def build() -> Path:
    """Build helm into the cache unless it is there already; return its path."""
    if is_built():
        return helm_path()
    if shutil.which("go") is None:
        raise RuntimeError("the `go` command is needed to build helm (Go ≥ 1.26)")
    started = time.monotonic()
    bin_dir = kube.cache_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    work = kube.cache_root() / "wrappers"
    work.mkdir(parents=True, exist_ok=True)
    info = kube.download_module(HELM_MODULE, HELM_VERSION, work)
    gomod = Path(info["GoMod"]).read_text()
    header, _ = kube.parse_gomod(gomod)
    wrap = work / "helm"
    kube.write_wrapper(wrap, "helm", HELM_MODULE, HELM_VERSION, {}, header)
    kube.build_group(wrap, {"helm": HELM_PACKAGE}, _ldflags(gomod), bin_dir)
    _stamp().write_text(HELM_VERSION)
    _log(f"helm {HELM_VERSION} built in {time.monotonic() - started:.0f}s -> {helm_path()}")
    return helm_path()


def private_env(home: Path) -> dict[str, str]:
    """An environment for helm with a home of its own (no user's repositories or
    registry logins)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            **{f"HELM_{kind}_HOME": str(home / kind.lower())
               for kind in ("CACHE", "CONFIG", "DATA")}}


def push_chart(source: Path, registry_host: str, repository: str = "charts", *,
               registry_config: Path | None = None) -> str:
    """Package the chart folder `source` and push it to the plain-HTTP registry at
    `registry_host` (as CI publishes a chart; `registry_config`: a Docker-style
    config.json with the pusher's credentials); the package lives in a temporary folder
    only. Returns `oci://<registry_host>/<repository>/<name>`."""
    helm = build()
    with tempfile.TemporaryDirectory(prefix="chart-push-") as work:
        env = private_env(Path(work) / "home")
        subprocess.run([str(helm), "package", str(source), "-d", work], check=True,
                       capture_output=True, env=env, timeout=120)
        [package] = Path(work).glob("*.tgz")
        subprocess.run([str(helm), "push", str(package), f"oci://{registry_host}/{repository}",
                        "--plain-http", *(["--registry-config", str(registry_config)]
                                          if registry_config else [])],
                       check=True, capture_output=True, env=env, timeout=120)
    name = package.name.rsplit("-", 1)[0]
    _log(f"pushed chart {name} to oci://{registry_host}/{repository}")
    return f"oci://{registry_host}/{repository}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.helm", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build helm into the cache if missing; print its path")
    sub.add_parser("path", help="print where the helm binary is (built or not)")
    args = parser.parse_args(argv)
    print(build() if args.cmd == "build" else helm_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
