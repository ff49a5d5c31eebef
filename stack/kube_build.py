"""Building the control plane's binaries from the Go module proxy, once, into a cache
folder outside the repository keyed by versions (stack/helm.py builds helm the same way)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSIONS: dict[str, str] = {
    "kubernetes": "v1.36.3",
    "etcd": "v3.6.16",
    "kwok": "v0.8.0",
}

K8S_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KWOK_MODULE = "sigs.k8s.io/kwok"

# binary name -> Go package path, grouped by the wrapper module that builds it.
K8S_BINARIES: dict[str, str] = {
    "kube-apiserver": f"{K8S_MODULE}/cmd/kube-apiserver",
    "kube-controller-manager": f"{K8S_MODULE}/cmd/kube-controller-manager",
    "kube-scheduler": f"{K8S_MODULE}/cmd/kube-scheduler",
    "kubectl": f"{K8S_MODULE}/cmd/kubectl",
}
ETCD_BINARIES: dict[str, str] = {"etcd": ETCD_MODULE}
KWOK_BINARIES: dict[str, str] = {"kwok": f"{KWOK_MODULE}/cmd/kwok"}

# kwok stage files: nodes become Ready and keep a lease, pods become Ready,
# complete, and are removed on deletion (what a kubelet would do).
KWOK_STAGES: tuple[str, ...] = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


def say(msg: str) -> None:
    print(f"[stack.kube] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The version-keyed cache folder (binaries, wrapper modules, stages)."""
    base = os.environ.get("PREVIEW_CACHE_DIR") or str(Path.home() / ".cache" / "preview-engine")
    key = f"{VERSIONS['kubernetes']}-{VERSIONS['etcd']}-{VERSIONS['kwok']}"
    return Path(base) / "kube" / key


def cache_dir() -> Path:
    """Where the built binaries live."""
    return cache_root() / "bin"


def stages_dir() -> Path:
    return cache_root() / "stages"


ALL_BINARIES: tuple[str, ...] = (*ETCD_BINARIES, *K8S_BINARIES, *KWOK_BINARIES)


def missing_binaries(bin_dir: Path | None = None) -> list[str]:
    d = bin_dir or cache_dir()
    return [name for name in ALL_BINARIES if not (d / name).is_file()]


# --------------------------------------------------------------------------- build


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never let a go.mod `toolchain` line trigger a toolchain download, and let
    # `go build` fill go.sum in the generated wrapper modules by itself.
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    flags = env.get("GOFLAGS", "").split()
    flags = [f for f in flags if not f.startswith("-mod=")] + ["-mod=mod"]
    env["GOFLAGS"] = " ".join(flags)
    return env


def _go(args: list[str], cwd: Path) -> str:
    cmd = ["nice", "-n", "10", "go", *args]
    say(f"$ (cd {cwd} && {' '.join(cmd)})")
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"go {' '.join(args)} failed ({proc.returncode}) in {cwd}:\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def download_module(module: str, version: str, cwd: Path) -> dict[str, str]:
    """`go mod download -json` gives the module dir and its go.mod path."""
    out = _go(["mod", "download", "-json", f"{module}@{version}"], cwd)
    info: dict[str, str] = json.loads(out)
    if info.get("Error"):
        raise RuntimeError(f"go mod download {module}@{version}: {info['Error']}")
    return info


def parse_gomod(text: str) -> tuple[list[str], list[str]]:
    """Return (go/godebug lines, local-path replace targets) of an upstream go.mod."""
    header: list[str] = []
    local_replaced: list[str] = []
    in_block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if in_block:
            if line == ")":
                if in_block == "godebug":
                    header.append(")")
                in_block = None
                continue
            if in_block == "godebug":
                header.append("\t" + line)
            elif in_block == "replace" and "=>" in line:
                left, right = (s.strip() for s in line.split("=>", 1))
                if right.startswith("./") or right.startswith("../"):
                    local_replaced.append(left.split()[0])
            continue
        if line.startswith("go "):
            header.append(line)
        elif line == "godebug (":
            header.append(line)
            in_block = "godebug"
        elif line.startswith("godebug "):
            header.append(line)
        elif line == "replace (":
            in_block = "replace"
        elif line.startswith("require (") or line.startswith("exclude ("):
            in_block = "other"
        elif line.startswith("replace ") and "=>" in line:
            left, right = (s.strip() for s in line[len("replace ") :].split("=>", 1))
            if right.startswith("./") or right.startswith("../"):
                local_replaced.append(left.split()[0])
    return header, local_replaced


def remote_replaces(text: str) -> dict[str, str]:
    """An upstream go.mod's replace directives to other modules (`a => b v`): Go ignores
    them in a dependency, so a wrapper building it must repeat them (write_wrapper)."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        words = raw.split("//", 1)[0].split()
        if words[:1] == ["replace"]:
            words = words[1:]
        if "=>" in words:
            left, right = words[: words.index("=>")], words[words.index("=>") + 1 :]
            if left and len(right) == 2:  # a local path has no version
                found[" ".join(left)] = " ".join(right)
    return found


def write_wrapper(
    wrap_dir: Path,
    name: str,
    module: str,
    version: str,
    replaces: dict[str, str],
    header: list[str],
    redirects: dict[str, str] | None = None,
) -> None:
    """A tiny module of our own: `go install mod@v` refuses replace directives.
    replaces: module -> version of the same module; redirects: module -> "other version"."""
    wrap_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"module preview-engine.local/{name}",
        "",
        *header,
        "",
        f"require {module} {version}",
        "",
    ]
    targets = {mod: f"{mod} {ver}" for mod, ver in replaces.items()} | (redirects or {})
    if targets:
        lines.append("replace (")
        lines += [f"\t{mod} => {target}" for mod, target in sorted(targets.items())]
        lines.append(")")
    text = "\n".join(lines) + "\n"
    gomod = wrap_dir / "go.mod"
    # Rewrite only when the intent changed; go.sum and the resolved go.mod stay.
    marker = wrap_dir / "wrapper.intent"
    if not gomod.exists() or not marker.exists() or marker.read_text() != text:
        gomod.write_text(text)
        (wrap_dir / "go.sum").unlink(missing_ok=True)
        marker.write_text(text)


def build_group(
    wrap_dir: Path, packages: dict[str, str], ldflags: list[str], bin_dir: Path
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_dir))
    try:
        for name, pkg in packages.items():
            started = time.monotonic()
            say(f"building {name} ({pkg}) ...")
            _go(
                [
                    "build",
                    "-p=2",
                    "-trimpath",
                    "-ldflags",
                    " ".join(["-s", "-w", *ldflags]),
                    "-o",
                    str(tmp / name),
                    pkg,
                ],
                wrap_dir,
            )
            # Atomic: an interrupted build never leaves a half binary in bin/.
            os.replace(tmp / name, bin_dir / name)
            say(f"built {name} in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def k8s_ldflags(version: str) -> list[str]:
    """What Kubernetes' own build stamps: `--version` of every binary reports `version`."""
    major, minor = version.lstrip("v").split(".")[:2]
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={date}",
        ]
    return flags


def kubernetes_wrapper(work: Path) -> Path:
    """Write (or keep) the wrapper module that builds k8s.io/kubernetes commands, in
    work/kubernetes; return that folder. The control plane and the node build there."""
    ver = VERSIONS["kubernetes"]
    info = download_module(K8S_MODULE, ver, work)
    header, local = parse_gomod(Path(info["GoMod"]).read_text())
    # Each staging module k8s.io/x is published as k8s.io/x v0.<minor>.<patch>.
    staging_ver = "v0." + ".".join(ver.lstrip("v").split(".")[1:])
    reps = {m: staging_ver for m in local if m.startswith("k8s.io/")}
    say(f"kubernetes {ver}: {len(reps)} staging modules at {staging_ver}")
    wrap = work / "kubernetes"
    write_wrapper(wrap, "kubernetes", K8S_MODULE, ver, reps, header)
    return wrap


def _copy_stages(kwok_dir: Path) -> None:
    dest = stages_dir()
    if all((dest / Path(s).name).is_file() for s in KWOK_STAGES):
        return
    dest.mkdir(parents=True, exist_ok=True)
    for stage in KWOK_STAGES:
        src = kwok_dir / "kustomize" / "stage" / stage
        tmp = dest / f".{Path(stage).name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest / Path(stage).name)


def build() -> Path:
    """Build whatever is missing into cache_dir(); return that directory."""
    if shutil.which("go") is None:
        raise RuntimeError("the `go` command is needed to build the control plane (Go ≥ 1.26)")
    root = cache_root()
    bin_dir = cache_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    missing = set(missing_binaries(bin_dir))
    need_stages = not all((stages_dir() / Path(s).name).is_file() for s in KWOK_STAGES)
    if not missing and not need_stages:
        return bin_dir
    started = time.monotonic()
    say(f"building {sorted(missing) or 'stages'} into {bin_dir}")
    work = root / "wrappers"
    work.mkdir(parents=True, exist_ok=True)

    if missing & set(ETCD_BINARIES):
        ver = VERSIONS["etcd"]
        info = download_module(ETCD_MODULE, ver, work)
        header, local = parse_gomod(Path(info["GoMod"]).read_text())
        # etcd's sibling modules (api, client, pkg) are published at the same tag.
        reps = {m: ver for m in local if m.startswith("go.etcd.io/etcd/")}
        wrap = work / "etcd"
        write_wrapper(wrap, "etcd", ETCD_MODULE, ver, reps, header)
        build_group(wrap, {n: p for n, p in ETCD_BINARIES.items() if n in missing}, [], bin_dir)

    if missing & set(K8S_BINARIES):
        build_group(
            kubernetes_wrapper(work),
            {n: p for n, p in K8S_BINARIES.items() if n in missing},
            k8s_ldflags(VERSIONS["kubernetes"]),
            bin_dir,
        )

    kwok_ver = VERSIONS["kwok"]
    kwok_info = download_module(KWOK_MODULE, kwok_ver, work)
    if missing & set(KWOK_BINARIES):
        header, _ = parse_gomod(Path(kwok_info["GoMod"]).read_text())
        wrap = work / "kwok"
        write_wrapper(wrap, "kwok", KWOK_MODULE, kwok_ver, {}, header)
        ld = [f"-X sigs.k8s.io/kwok/pkg/consts.Version={kwok_ver}"]
        build_group(wrap, {n: p for n, p in KWOK_BINARIES.items() if n in missing}, ld, bin_dir)
    _copy_stages(Path(kwok_info["Dir"]))
    say(f"build done in {time.monotonic() - started:.0f}s -> {bin_dir}")
    return bin_dir
