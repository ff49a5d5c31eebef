"""The binaries of a real Kubernetes node, built from the Go module proxy into the control
plane's cache folder, next to kubectl (see /work/shared/real-node.md for why each).

- kubelet, kube-proxy: k8s.io/kubernetes `cmd/kubelet`, `cmd/kube-proxy`, in the very
  wrapper module the control plane is built in (stack/kube_build.py: same staging
  modules, same version stamping), so node and control plane are one Kubernetes version.
- coredns: github.com/coredns/coredns with our main (stack/go/coredns/main.go): only the
  plugins cluster DNS needs, no `forward`, so no name is ever resolved off the machine.
- kube-network-policies: sigs.k8s.io/kube-network-policies, SIG Network's NetworkPolicy
  enforcer (NFQUEUE verdicts), with our main (stack/go/kube-network-policies/main.go):
  a kubeconfig file instead of a service account; its flags are documented there.
- traefik: github.com/traefik/traefik/v3 `cmd/traefik`, the ingress controller (v3.7
  does not build from the proxy: it needs a nested module that is not served). Its
  `global.checkNewVersion` defaults to true: run it with `--global.checkNewVersion=false`.

Each is built like the registry (stack/registry.py): a wrapper module, `go build`, an
atomic move into the cache, a `<name>.version` stamp next to it (with a hash of our
main.go for our two), and only when missing or of another version.

    python -m stack.node_build build   # prints the folder holding them
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from stack import kube_build as kb

K8S_VERSION = kb.VERSIONS["kubernetes"]
COREDNS_MODULE = "github.com/coredns/coredns"
KNP_MODULE = "sigs.k8s.io/kube-network-policies"
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
# The folder of our own main packages; each is copied into its wrapper module.
GO_DIR = Path(__file__).resolve().parent / "go"

BINARIES: dict[str, tuple[str, str, str]] = {
    # binary -> (module, version, package); our mains are the wrapper module itself.
    "kubelet": (kb.K8S_MODULE, K8S_VERSION, f"{kb.K8S_MODULE}/cmd/kubelet"),
    "kube-proxy": (kb.K8S_MODULE, K8S_VERSION, f"{kb.K8S_MODULE}/cmd/kube-proxy"),
    "coredns": (COREDNS_MODULE, "v1.15.0", "preview-engine.local/coredns"),
    "kube-network-policies": (KNP_MODULE, "v0.8.0", "preview-engine.local/kube-network-policies"),
    "traefik": (TRAEFIK_MODULE, "v3.6.12", f"{TRAEFIK_MODULE}/cmd/traefik"),
}
VERSIONS: dict[str, str] = {name: version for name, (_, version, _) in BINARIES.items()}
MAINS: dict[str, Path] = {
    "coredns": GO_DIR / "coredns" / "main.go",
    "kube-network-policies": GO_DIR / "kube-network-policies" / "main.go",
}
LDFLAGS: dict[str, list[str]] = {
    "coredns": [f"-X {COREDNS_MODULE}/coremain.GitCommit={VERSIONS['coredns']}"],
    "traefik": [f"-X {TRAEFIK_MODULE}/pkg/version.Version={VERSIONS['traefik']}"],
}


def _log(msg: str) -> None:
    print(f"[stack.node_build] {msg}", file=sys.stderr, flush=True)


def binary(name: str) -> Path:
    """Next to kubectl, so one folder on PATH gives them all."""
    if name not in BINARIES:
        raise KeyError(f"not a node binary: {name!r} (one of {', '.join(BINARIES)})")
    return kb.cache_dir() / name


def _stamp(name: str) -> Path:
    return kb.cache_dir() / f"{name}.version"


def wanted_stamp(name: str) -> str:
    """The module version, and for our own mains a hash of main.go: editing it rebuilds."""
    version = VERSIONS[name]
    main = MAINS.get(name)
    if main is None:
        return version
    return f"{version} main.go:{hashlib.sha256(main.read_bytes()).hexdigest()[:16]}"


def _is_built(name: str) -> bool:
    stamp = _stamp(name)
    return (binary(name).is_file() and stamp.is_file()
            and stamp.read_text() == wanted_stamp(name))


def missing() -> list[str]:
    """The binaries not in the cache, or built from another version (or main.go)."""
    return [name for name in BINARIES if not _is_built(name)]


def is_built() -> bool:
    return not missing()


def _copy_main(name: str, wrap: Path) -> None:
    """Our main.go into the wrapper module (atomically, and only when it differs)."""
    text = MAINS[name].read_bytes()
    dest = wrap / "main.go"
    if dest.is_file() and dest.read_bytes() == text:
        return
    tmp = wrap / ".main.go.tmp"
    tmp.write_bytes(text)
    os.replace(tmp, dest)


def _build_one(wrap: Path, name: str, ldflags: list[str], bin_dir: Path) -> None:
    started = time.monotonic()
    stamp = wanted_stamp(name)
    kb.build_group(wrap, {name: BINARIES[name][2]}, ldflags, bin_dir)
    _stamp(name).write_text(stamp)
    size = binary(name).stat().st_size / 1e6
    _log(f"{name} {stamp} built in {time.monotonic() - started:.0f}s ({size:.0f} MB)")


def build() -> Path:
    """Build what is missing or of another version into the cache; return the folder."""
    bin_dir = kb.cache_dir()
    todo = missing()
    if not todo:
        return bin_dir
    if shutil.which("go") is None:
        raise RuntimeError("the `go` command is needed to build the node (Go ≥ 1.26)")
    bin_dir.mkdir(parents=True, exist_ok=True)
    work = kb.cache_root() / "wrappers"
    work.mkdir(parents=True, exist_ok=True)
    _log(f"building {todo} into {bin_dir}")
    k8s = [name for name in todo if BINARIES[name][0] == kb.K8S_MODULE]
    if k8s:
        wrap = kb.kubernetes_wrapper(work)  # shared with the control plane's build
        for name in k8s:
            _build_one(wrap, name, kb.k8s_ldflags(K8S_VERSION), bin_dir)
    for name in todo:
        if name in k8s:
            continue
        module, version, _ = BINARIES[name]
        info = kb.download_module(module, version, work)
        gomod = Path(info["GoMod"]).read_text()
        header, _ = kb.parse_gomod(gomod)
        wrap = work / name
        # Upstream replace directives (traefik has some) do not apply to a dependency.
        kb.write_wrapper(wrap, name, module, version, {}, header, kb.remote_replaces(gomod))
        if name in MAINS:
            _copy_main(name, wrap)
        _build_one(wrap, name, LDFLAGS.get(name, []), bin_dir)
    return bin_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.node_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the node's binaries into the cache if missing")
    sub.add_parser("path", help="print the folder that holds them (built or not)")
    args = parser.parse_args(argv)
    print(build() if args.cmd == "build" else kb.cache_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
