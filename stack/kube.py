"""A real Kubernetes control plane on 127.0.0.1, built from the Go module proxy.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake
nodes) are compiled once into a cache folder outside the repository (keyed by
versions) and started on free loopback ports in a few seconds. See
/work/shared/kubernetes-control-plane.md for the reasoning behind each flag.

    python -m stack.kube build
    python -m stack.kube up --state-dir /tmp/kube
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stack.ports import free_ports

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

NODE_COUNT = 2


def _log(msg: str) -> None:
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
    _log(f"$ (cd {cwd} && {' '.join(cmd)})")
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


def write_wrapper(
    wrap_dir: Path,
    name: str,
    module: str,
    version: str,
    replaces: dict[str, str],
    header: list[str],
) -> None:
    """A tiny module of our own: `go install mod@v` refuses replace directives."""
    wrap_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"module preview-engine.local/{name}",
        "",
        *header,
        "",
        f"require {module} {version}",
        "",
    ]
    if replaces:
        lines.append("replace (")
        lines += [f"\t{mod} => {mod} {ver}" for mod, ver in sorted(replaces.items())]
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
            _log(f"building {name} ({pkg}) ...")
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
            _log(f"built {name} in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _k8s_ldflags(version: str) -> list[str]:
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
    _log(f"building {sorted(missing) or 'stages'} into {bin_dir}")
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
        ver = VERSIONS["kubernetes"]
        info = download_module(K8S_MODULE, ver, work)
        header, local = parse_gomod(Path(info["GoMod"]).read_text())
        # Each staging module k8s.io/x is published as k8s.io/x v0.<minor>.<patch>.
        staging_ver = "v0." + ".".join(ver.lstrip("v").split(".")[1:])
        reps = {m: staging_ver for m in local if m.startswith("k8s.io/")}
        _log(f"kubernetes {ver}: {len(reps)} staging modules at {staging_ver}")
        wrap = work / "kubernetes"
        write_wrapper(wrap, "kubernetes", K8S_MODULE, ver, reps, header)
        build_group(
            wrap,
            {n: p for n, p in K8S_BINARIES.items() if n in missing},
            _k8s_ldflags(ver),
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
    _log(f"build done in {time.monotonic() - started:.0f}s -> {bin_dir}")
    return bin_dir


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    cert: Path  # 127.0.0.1/localhost, O=system:masters, server + client auth
    key: Path  # also signs and verifies service-account tokens


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_pki(pki_dir: Path) -> Pki:
    """A throwaway CA and one admin/serving certificate, as kwokctl does."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=365)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preview-engine-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kube-admin"),
        ]
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the `kubernetes` Service IP
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki(ca_cert=pki_dir / "ca.crt", cert=pki_dir / "admin.crt", key=pki_dir / "admin.key")
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        pki.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki, name: str = "preview-test") -> None:
    """A self-contained kubeconfig (data embedded) so it can be copied anywhere."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": f"{name}-admin",
                "user": {
                    "client-certificate-data": b64(pki.cert),
                    "client-key-data": b64(pki.key),
                },
            }
        ],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": f"{name}-admin"}},
        ],
        "current-context": name,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    # JSON is valid YAML; kubectl and the Python client both read it.
    _write_private(tmp, json.dumps(config, indent=2).encode())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- running


def _set_pdeathsig() -> None:
    """Children die with the process that started them, even on SIGKILL (Linux).

    SIGKILL, not SIGTERM: kube-apiserver hangs in its graceful shutdown once etcd is
    gone, and with the parent dead nobody is left to escalate.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok on loopback.

    Every listener binds to 127.0.0.1 on a free port, so several control planes
    can run side by side; all state (PKI, etcd data, logs, kubeconfig) lives in
    state_dir.
    """

    def __init__(self, state_dir: Path, bin_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else cache_dir()
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._pki: Pki | None = None

    # -- public API

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"missing binaries {missing} in {self.bin_dir}; run `python -m stack.kube build`"
            )
        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in range(3):
            try:
                self._start(deadline)
                break
            except ControlPlaneError as e:
                self.stop()
                # Free ports are picked before the components bind them, so a
                # neighbour (e.g. a second control plane) can win the race: retry.
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                _log(f"port clash, retrying with new ports: {str(e).splitlines()[0]}")
            except BaseException:
                self.stop()
                raise
        self.timings["start_to_ready_s"] = round(time.monotonic() - t0, 2)
        _log(
            f"control plane ready at {self.server} in {self.timings['start_to_ready_s']}s "
            f"(readyz after {self.timings['start_to_readyz_s']}s); kubeconfig={self.kubeconfig}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every process group we started, newest first. Idempotent."""
        with self._lock:
            procs, self._procs = self._procs, []
        # One at a time, clients first: kube-apiserver hangs in its shutdown
        # (until SIGKILL) when etcd goes away under it, so etcd stops last.
        for p in reversed(procs):
            self._signal(p, signal.SIGTERM)
            try:
                p.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log(f"{p.name} ignored SIGTERM for {timeout}s; killing it")
                self._signal(p, signal.SIGKILL)
                p.popen.wait(timeout=5)
            # Reap any stray child left in the group (none expected).
            self._signal(p, signal.SIGKILL)
            p.log_file.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- internals

    @staticmethod
    def _signal(p: _Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.popen.pid, sig)  # start_new_session=True: pgid == pid

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        log_file.write(f"$ {' '.join(cmd)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.state_dir,
            env=env if env is not None else self._child_env(),
            start_new_session=True,  # own process group: stop() kills it whole
            preexec_fn=_set_pdeathsig,
        )
        with self._lock:
            self._procs.append(_Proc(name, popen, log_path, log_file))

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The components get explicit flags; an inherited KUBECONFIG must not leak in.
        env.pop("KUBECONFIG", None)
        return env

    def _check_alive(self) -> None:
        for p in self._procs:
            rc = p.popen.poll()
            if rc is not None:
                raise ControlPlaneError(
                    f"{p.name} exited with {rc}; last log lines ({p.log_path}):\n"
                    + self.log_tail(p.name)
                )

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._pki is not None
        ctx = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        ctx.load_cert_chain(str(self._pki.cert), str(self._pki.key))
        return ctx

    def _request(
        self, method: str, path: str, body: Mapping[str, object] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        # No proxy: everything is on loopback.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=self._ssl_context()),
        )
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _wait(self, what: str, deadline: float, check: Callable[[], bool]) -> None:
        """Poll check() until it returns True; fail fast if a component died."""
        last_err: BaseException | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError) as e:
                last_err = e
            time.sleep(0.1)
        raise ControlPlaneError(f"timed out waiting for {what} (last error: {last_err})")

    def _start(self, deadline: float) -> None:
        sd = self.state_dir
        sd.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        names = [
            "apiserver",
            "etcd_client",
            "etcd_peer",
            "etcd_metrics",
            "kcm",
            "scheduler",
            "kwok",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        pki = self._pki = generate_pki(sd / "pki")
        write_kubeconfig(self.kubeconfig, self.server, pki)
        p = self.ports

        etcd_client = f"http://127.0.0.1:{p['etcd_client']}"
        etcd_peer = f"http://127.0.0.1:{p['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                "etcd",
                "--name=node0",
                f"--data-dir={sd / 'etcd'}",
                f"--listen-client-urls={etcd_client}",
                f"--advertise-client-urls={etcd_client}",
                f"--listen-peer-urls={etcd_peer}",
                f"--initial-advertise-peer-urls={etcd_peer}",
                f"--initial-cluster=node0={etcd_peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{p['etcd_metrics']}",
                "--unsafe-no-fsync",  # tests: durability is irrelevant, speed is not
                "--auto-compaction-retention=1",
                "--log-level=warn",
            ],
        )

        key, cert, ca = str(pki.key), str(pki.cert), str(pki.ca_cert)
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers={etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",  # no default route needed
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={sd / 'pki' / 'apiserver'}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={ca}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                f"--proxy-client-cert-file={cert}",
                f"--proxy-client-key-file={key}",
                "--endpoint-reconciler-type=none",  # nothing routes to 127.0.0.1 from pods
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )

        def readyz() -> bool:
            status, _ = self._request("GET", "/readyz", timeout=2)
            return status == 200

        self._wait("kube-apiserver /readyz", deadline, readyz)
        self.timings["start_to_readyz_s"] = round(time.monotonic() - t0, 2)

        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                *common,
                f"--secure-port={p['kcm']}",
                f"--cert-dir={sd / 'pki' / 'kcm'}",
                f"--root-ca-file={ca}",
                f"--service-account-private-key-file={key}",
                "--use-service-account-credentials=false",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                *common,
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={sd / 'pki' / 'scheduler'}",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
            ],
        )

        kwok_home = sd / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        kwok_env = self._child_env()
        kwok_env["HOME"] = str(kwok_home)  # ignore any ~/.kwok/kwok.yaml of the user
        stages = [str(stages_dir() / Path(s).name) for s in KWOK_STAGES]
        self._spawn(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={kc}",
                *[f"--config={s}" for s in stages],
                "--manage-all-nodes=true",
                "--node-ip=127.0.0.1",
                f"--node-port={p['kwok']}",
                f"--server-address=127.0.0.1:{p['kwok']}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                "--cidr=10.244.0.0/16",  # pod IPs apart from the Service range
                "--node-lease-duration-seconds=40",  # pairs with the heartbeat-with-lease stage
            ],
            env=kwok_env,
        )

        for i in range(NODE_COUNT):
            self._create_node(f"kwok-node-{i}")

        def nodes_ready() -> bool:
            status, body = self._request("GET", "/api/v1/nodes")
            if status != 200:
                return False
            items = json.loads(body).get("items", [])
            ready = [
                n
                for n in items
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            ]
            return len(ready) >= NODE_COUNT

        def default_sa() -> bool:
            status, _ = self._request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200

        self._wait("kwok nodes Ready", deadline, nodes_ready)
        self._wait("the default ServiceAccount", deadline, default_sa)

    def _create_node(self, name: str) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                # kwok-managed marker (also used by kwokctl) and the usual labels.
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }
        status, body = self._request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node {name}: HTTP {status}: {body[:500]!r}")


# --------------------------------------------------------------------------- CLI


def _cmd_build(_: argparse.Namespace) -> int:
    started = time.monotonic()
    bin_dir = build()
    print(bin_dir)
    _log(f"total {time.monotonic() - started:.0f}s")
    return 0


def _cmd_path(_: argparse.Namespace) -> int:
    print(cache_dir())
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if missing_binaries():
        build()
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    with ControlPlane(Path(args.state_dir)) as cp:
        print(cp.kubeconfig, flush=True)
        while not stop.wait(1.0):
            cp._check_alive()  # a dead component ends `up` with its log tail
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.kube", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the missing binaries into the cache").set_defaults(
        func=_cmd_build
    )
    up = sub.add_parser("up", help="start a control plane; runs until SIGINT/SIGTERM")
    up.add_argument("--state-dir", required=True, help="PKI, etcd data, logs and kubeconfig")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("path", help="print the binaries folder").set_defaults(func=_cmd_path)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
