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
import json
import os
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from stack.kube_build import (
    KWOK_STAGES,
    VERSIONS,
    build,
    build_group,
    cache_dir,
    cache_root,
    download_module,
    missing_binaries,
    parse_gomod,
    say,
    stages_dir,
    write_wrapper,
)
from stack.kube_pki import Pki, generate_pki, write_kubeconfig
from stack.ports import free_ports
from stack.processes import ProcessDied, Supervisor

# Re-exported: tests, stack/helm.py and stack/registry.py build with the same helpers.
__all__ = ["VERSIONS", "ControlPlane", "build", "build_group", "cache_dir", "cache_root",
           "download_module", "missing_binaries", "parse_gomod", "stages_dir",
           "write_wrapper"]

NODE_COUNT = 2

# --------------------------------------------------------------------------- running


class ControlPlaneError(RuntimeError):
    pass


class ControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok on loopback.

    Every listener binds to 127.0.0.1 on a free port, so several control planes
    can run side by side; all state (PKI, etcd data, logs, kubeconfig) lives in
    state_dir.
    """

    def __init__(self, state_dir: Path, bin_dir: Path | None = None, *,
                 fake_nodes: int = NODE_COUNT) -> None:
        """fake_nodes: kwok nodes to make (0: no kwok at all, for a cluster whose pods
        run on a real node, stack/node.py)."""
        self.state_dir = Path(state_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else cache_dir()
        self.fake_nodes = fake_nodes
        self.processes = Supervisor(self.state_dir / "logs")
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._pki: Pki | None = None

    # -- public API

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        assert self._pki is not None, "start() the control plane first"
        return self._pki

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
                say(f"port clash, retrying with new ports: {str(e).splitlines()[0]}")
            except BaseException:
                self.stop()
                raise
        self.timings["start_to_ready_s"] = round(time.monotonic() - t0, 2)
        say(
            f"control plane ready at {self.server} in {self.timings['start_to_ready_s']}s "
            f"(readyz after {self.timings['start_to_readyz_s']}s); kubeconfig={self.kubeconfig}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every process group we started, newest first. Idempotent.

        One at a time, clients first: kube-apiserver hangs in its shutdown (until
        SIGKILL) when etcd goes away under it, so etcd stops last."""
        self.processes.stop(timeout)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.processes.log_tail(name, lines)

    # -- internals

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.spawn(name, [str(self.bin_dir / args[0]), *args[1:]],
                             env=env if env is not None else self._child_env(),
                             cwd=self.state_dir)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The components get explicit flags; an inherited KUBECONFIG must not leak in.
        env.pop("KUBECONFIG", None)
        return env

    def _check_alive(self) -> None:
        try:
            self.processes.check_alive()
        except ProcessDied as died:
            raise ControlPlaneError(str(died)) from None

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._pki is not None
        ctx = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        ctx.load_cert_chain(str(self._pki.cert), str(self._pki.key))
        return ctx

    def request(
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
                # logs and exec on a real node (stack/node.py): by its address, never by a
                # host name the machine's resolver would be asked for (real-node.md, 8)
                f"--kubelet-client-certificate={cert}",
                f"--kubelet-client-key={key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
            ],
        )

        def readyz() -> bool:
            status, _ = self.request("GET", "/readyz", timeout=2)
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

        if self.fake_nodes:
            self._start_kwok(deadline)

        def default_sa() -> bool:
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200

        self._wait("the default ServiceAccount", deadline, default_sa)

    def _start_kwok(self, deadline: float) -> None:
        sd, p, kc = self.state_dir, self.ports, str(self.kubeconfig)
        cert, key = str(self.pki.cert), str(self.pki.key)
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
                # Only its own nodes: a real node may share the cluster (real-node.md, 14).
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
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

        for i in range(self.fake_nodes):
            self._create_node(f"kwok-node-{i}")

        def nodes_ready() -> bool:
            status, body = self.request("GET", "/api/v1/nodes")
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
            return len(ready) >= self.fake_nodes

        self._wait("kwok nodes Ready", deadline, nodes_ready)

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
        status, body = self.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node {name}: HTTP {status}: {body[:500]!r}")


# --------------------------------------------------------------------------- CLI


def _cmd_build(_: argparse.Namespace) -> int:
    started = time.monotonic()
    bin_dir = build()
    print(bin_dir)
    say(f"total {time.monotonic() - started:.0f}s")
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
