"""A real Kubernetes node next to the local control plane: containerd and runc from
Debian, kubelet, kube-proxy, CoreDNS and SIG Network's NetworkPolicy enforcer (built by
stack/node_build.py), all in a network namespace of their own (stack/node_net.py), and
Traefik on the host's 127.0.0.1 as the ingress controller. Pods really run here:
images are pulled from the local registry, probes hit real processes, and a preview's
URL answers. /work/shared/real-node.md has the reasoning behind each setting.

Node components reach the API server and the registry, which listen on the host's
127.0.0.1 only, through socat relays over unix sockets: inside the namespace the same
`127.0.0.1:<port>` answers, so one kubeconfig and one image name work on both sides.
Pods reach host services they are given (the preview database server) at the pods'
gateway address, through the same kind of relay.

    python -m stack.node up --state-dir /tmp/node   # a control plane and one real node
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from stack import node_build
from stack.kube import ControlPlane
from stack.node_cleanup import RUN_DIR, NodeRecord, clean_slot
from stack.node_net import POLICY_QUEUE, SLOTS, NodeNetwork
from stack.ports import free_ports
from stack.processes import Supervisor
from starter.wake import PREFIX as WAKE_PREFIX

CLUSTER_DOMAIN = "cluster.local"
# Kernel settings kubelet insists on: with protectKernelDefaults it only reads them, and
# reads our copies (bind-mounted in the node's mount namespace), never the machine's.
KERNEL_DEFAULTS = {
    "vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10",
    "kernel/panic_on_oops": "1", "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
REQUIRED_COMMANDS = ("containerd", "runc", "socat", "nft", "iptables", "nsenter", "unshare",
                     "ip", "conntrack")


class NodeError(RuntimeError):
    pass


def missing_requirements() -> list[str]:
    """What this machine lacks to run a real node (empty when it can)."""
    missing = [f"command {c}" for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("CNI plugins in /usr/lib/cni (containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces, mounts, cgroups)")
    missing += [f"binary {name}" for name in node_build.missing()]
    return missing


def memory_cgroup() -> str:
    """This process's memory cgroup: the node's cgroups go under it (real-node.md, 4)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    raise NodeError("no memory cgroup (cgroup v1) for this process: cannot place the node")


class RealNode:
    """One kubelet node joined to `plane`, on a slot of its own; `stop()` leaves nothing."""

    def __init__(self, plane: ControlPlane, state_dir: Path, *, sandbox_image: str,
                 relayed_ports: Mapping[str, int], pod_services: Mapping[str, int] | None = None,
                 registry_mirrors: Mapping[str, str] | None = None,
                 ingress_port: int | None = None, default_backend: str | None = None,
                 slot: int | None = None) -> None:
        """relayed_ports: host 127.0.0.1 ports the node's components reach (API server,
        registry); pod_services: host ports pods reach at the gateway (a database
        server); registry_mirrors: image hosts pulled from another address
        ({"registry.local": "127.0.0.1:5000"}, a relayed port); default_backend: where
        the ingress sends a request no route takes (the starter: it wakes a sleeping
        preview), as a base URL on the host; slot: the one to take if it is free (a
        restarted stack's node keeps its name and its pods' gateway)."""
        self.plane = plane
        self.state_dir = Path(state_dir).resolve()
        self.sandbox_image = sandbox_image
        self.relayed_ports = dict(relayed_ports)  # host 127.0.0.1 ports the node reaches
        self.pod_services = dict(pod_services or {})
        self.registry_mirrors = dict(registry_mirrors or {})
        self.ingress_port = ingress_port
        self.default_backend = default_backend
        self.preferred_slot = slot
        self.processes = Supervisor(self.state_dir / "logs")
        self.network: NodeNetwork | None = None
        self.timings: dict[str, float] = {}
        self._lock_file: IO[str] | None = None
        self._holder = 0

    # -- public

    @property
    def name(self) -> str:
        assert self.network is not None, "start() the node first"
        return self.network.name

    @property
    def gateway(self) -> str:
        """The address pods reach the host's services at (see pod_services)."""
        assert self.network is not None, "start() the node first"
        return self.network.gateway

    @property
    def host_address(self) -> str:
        """The host's end of the node's link: where a host-network ingress controller's
        connections to pods come from (NetworkPolicy must admit it, real-node.md 12)."""
        assert self.network is not None, "start() the node first"
        return self.network.host_ip

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        missing = missing_requirements()
        if missing:
            raise NodeError("a real node needs " + ", ".join(missing)
                            + " (`make packages node` installs and builds them, as root)")
        started = time.monotonic()
        try:
            self._start(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = round(time.monotonic() - started, 2)

    def stop(self) -> None:
        """Stop every process and remove every trace of the node. Idempotent."""
        self.processes.stop(timeout=10)
        if self.network is not None:
            clean_slot(self._record())
            self.network = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the slot
            self._lock_file = None

    def engine_settings(self, registry_host: str, database_port: int) -> dict[str, Any]:
        """Settings fields that point the engine at this node: pods reach the preview
        database server and DNS at the gateway (their egress policy follows from it),
        the ingress controller's connections come from the host's end of the link,
        URLs carry the ingress's port, and `registry.local` is the local registry."""
        return {
            "preview_database_app_address": f"{self.gateway}:{database_port}",
            "cluster_dns_cidrs": [f"{self.gateway}/32"],
            "ingress_controller_cidrs": [f"{self.host_address}/32"],
            "preview_url_port": self.ingress_port,
            "ingress_wait_for_address": True,  # Traefik publishes 127.0.0.1
            # ...before it routes the host: ready once the URL answers through it.
            "preview_url_check": True,
            "preview_url_connect_to": f"127.0.0.1:{self.ingress_port}",
            "registry_mirrors": {**self.registry_mirrors},
            "registry_plain_http": [registry_host],
            "kubeconfig": str(self.plane.kubeconfig),
        }

    def in_node(self, *argv: str) -> list[str]:
        """A command in the node's network and mount namespaces."""
        return ["nsenter", "-t", str(self._holder), "-m", "-n", "--", *argv]

    # -- start

    def _start(self, deadline: float) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        net = self.network = self._take_slot()
        if self.ingress_port is None:
            self.ingress_port = free_ports(1)[0]
        cgroup_root = f"{memory_cgroup().rstrip('/')}/{net.name}"
        record = self._record(cgroup_root)
        self._save(record)  # before anything is made: a killed stack's successor reads it
        net.create(relay_ports=self.pod_services.values())
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._save(record.create_cgroups())
        self._mount_namespace(net, deadline)
        self._relays(net)
        cfg = self.state_dir / "config"
        cfg.mkdir(exist_ok=True)
        self._containerd(cfg, deadline)
        self._kubelet(net, cfg, cgroup_root)
        self._cluster_services(net, cfg)
        self._wait("node Ready", deadline, self._node_ready)
        self._wait("cluster DNS", deadline, lambda: self._http_ok(self.in_node(
            "curl", "-sf", "--max-time", "1", "http://127.0.0.1:8181/ready")))
        self._traefik(deadline)

    def _take_slot(self) -> NodeNetwork:
        """The preferred slot if free, else the first free one; a slot left by a killed
        stack is cleaned before reuse."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        order = list(range(SLOTS))
        if self.preferred_slot in order:
            order.remove(self.preferred_slot)
            order.insert(0, self.preferred_slot)
        for slot in order:
            lock = open(RUN_DIR / f"preview-node-{slot}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._lock_file = lock
            left = RUN_DIR / f"preview-node-{slot}.json"
            if left.exists():
                clean_slot(NodeRecord.from_json(json.loads(left.read_text())))
            return NodeNetwork(slot)
        raise NodeError(f"all {SLOTS} node slots are in use on this machine")

    def _save(self, record: NodeRecord) -> None:
        RUN_DIR.joinpath(f"{record.network.name}.json").write_text(json.dumps(record.to_json()))

    def _record(self, cgroup_root: str = "") -> NodeRecord:
        assert self.network is not None
        if not cgroup_root:
            left = RUN_DIR / f"{self.network.name}.json"
            if left.exists():
                return NodeRecord.from_json(json.loads(left.read_text()))
        return NodeRecord(slot=self.network.slot, state_dir=str(self.state_dir),
                          cgroup_root=cgroup_root)

    def _mount_namespace(self, net: NodeNetwork, deadline: float) -> None:
        """A process that holds the node's mount namespace: a tmpfs on /run/containerd
        (containerd 1.6 puts shim sockets there whatever its config) and read-only copies
        of the kernel settings kubelet checks."""
        sysctl = self.state_dir / "sysctl"
        sysctl.mkdir(exist_ok=True)
        binds = []
        for key, value in KERNEL_DEFAULTS.items():
            copy = sysctl / key.replace("/", ".")
            copy.write_text(value + "\n")
            target = f"/proc/sys/{key}"
            binds.append(f"mount --bind {copy} {target} && mount -o remount,bind,ro {target}")
        ready = self.state_dir / "mounts.ready"
        ready.unlink(missing_ok=True)
        Path("/run/containerd").mkdir(exist_ok=True)
        script = " && ".join(["mount -t tmpfs -o mode=0711 tmpfs /run/containerd", *binds,
                              f"touch {ready}", "exec sleep infinity"])
        child = self.processes.spawn("mounts", net.in_netns(
            "unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script))
        self._wait("the node's mount namespace", deadline, ready.exists)
        # nsenter execs unshare, which forks nothing: the child is the holder itself.
        self._holder = child.popen.pid

    def _relays(self, net: NodeNetwork) -> None:
        """Node side `127.0.0.1:<port>` → unix socket → host `127.0.0.1:<port>`; pod
        services the same from the gateway address."""
        relay_dir = self.socket_dir
        pairs = [(name, port, "127.0.0.1") for name, port in self.relayed_ports.items()]
        pairs += [(name, port, net.gateway) for name, port in self.pod_services.items()]
        for name, port, bind in pairs:
            sock = relay_dir / f"{name}.sock"
            self.processes.spawn(f"relay-{name}-host", [
                "socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
                f"TCP:127.0.0.1:{port}"])
            self.processes.spawn(f"relay-{name}-node", net.in_netns(
                "socat", f"TCP-LISTEN:{port},bind={bind},fork,reuseaddr",
                f"UNIX-CONNECT:{sock}"))

    def _containerd(self, cfg: Path, deadline: float) -> None:
        data = self.state_dir / "containerd"
        # Relayed registries are plain HTTP on the node's loopback, as on the host's.
        mirrors = {
            f"127.0.0.1:{port}": {"endpoint": [f"http://127.0.0.1:{port}"]}
            for port in self.relayed_ports.values()
        } | {host: {"endpoint": [f"http://{address}"]}
             for host, address in self.registry_mirrors.items()}
        config = {
            "version": 2,
            "root": str(data / "root"),
            "state": str(data / "state"),
            "grpc": {"address": str(self.containerd_socket)},
            "ttrpc": {"address": str(self.socket_dir / "containerd.sock.ttrpc")},
            "plugins": {
                "io.containerd.internal.v1.opt": {"path": str(data / "opt")},
                "io.containerd.grpc.v1.cri": {
                    "sandbox_image": self.sandbox_image,
                    "restrict_oom_score_adj": True,  # runc may not raise it (pitfall 2)
                    "netns_mounts_under_state_dir": True,
                    "disable_apparmor": True,
                    "stream_server_address": "127.0.0.1",
                    "stream_server_port": "0",
                    "containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc",
                                   "runtimes": {"runc": {
                                       "runtime_type": "io.containerd.runc.v2",
                                       "options": {"SystemdCgroup": False}}}},
                    "cni": {"bin_dir": "/usr/lib/cni", "conf_dir": str(cfg / "cni")},
                    "registry": {"mirrors": mirrors},
                },
            },
        }
        (cfg / "containerd.toml").write_text(_toml(config))
        self._cni_config(cfg / "cni")
        self.processes.spawn("containerd", self.in_node(
            "containerd", "--config", str(cfg / "containerd.toml")), env=_env())
        self._wait("containerd", deadline, self.containerd_socket.exists)

    @property
    def socket_dir(self) -> Path:
        """Unix sockets live here, not in the state folder: their paths must stay
        under 104 bytes, and a state folder may be deep."""
        return RUN_DIR / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.socket_dir / "containerd.sock"

    def _cni_config(self, folder: Path) -> None:
        assert self.network is not None
        folder.mkdir(exist_ok=True)
        conf = {
            "cniVersion": "0.4.0", "name": "preview-pods",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.state_dir / "ipam"),
                          "ranges": [[{"subnet": self.network.pod_cidr,
                                       "gateway": self.network.gateway}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (folder / "10-preview-pods.conflist").write_text(json.dumps(conf, indent=2))

    def _kubelet(self, net: NodeNetwork, cfg: Path, cgroup_root: str) -> None:
        pki = self.plane.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": net.node_ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},  # only the API server reaches it
            "failCgroupV1": False, "failSwapOn": False,
            "cgroupDriver": "cgroupfs", "cgroupRoot": cgroup_root, "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"], "protectKernelDefaults": True,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [net.gateway], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "",
            "maxPods": 110, "serializeImagePulls": False,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }
        (cfg / "kubelet.yaml").write_text(yaml.safe_dump(config))
        self.processes.spawn("kubelet", self.in_node(
            str(node_build.binary("kubelet")), f"--config={cfg / 'kubelet.yaml'}",
            f"--kubeconfig={self.plane.kubeconfig}", f"--root-dir={self.state_dir / 'kubelet'}",
            f"--cert-dir={self.state_dir / 'kubelet' / 'pki'}",
            f"--hostname-override={net.name}", f"--node-ip={net.node_ip}", "--v=1",
        ), env=_env())

    def _cluster_services(self, net: NodeNetwork, cfg: Path) -> None:
        kubeconfig = str(self.plane.kubeconfig)
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig}, "mode": "nftables",
            "hostnameOverride": net.name, "clusterCIDR": net.pod_cidr,
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Zero: leave the kernel's conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": [f"{net.node_ip}/32"],
        }
        (cfg / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy))
        self.processes.spawn("kube-proxy", self.in_node(
            str(node_build.binary("kube-proxy")), f"--config={cfg / 'kube-proxy.yaml'}"),
            env=_env())
        # No `forward` plugin and no root zone: names outside the cluster are REFUSED,
        # nothing leaves.
        corefile = (
            f"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{\n  bind {net.gateway}\n  errors\n"
            f"  ready 127.0.0.1:8181\n  health 127.0.0.1:8080\n"
            f"  kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{\n    kubeconfig {kubeconfig}\n"
            f"    pods insecure\n  }}\n  cache 5\n}}\n"
        )
        (cfg / "Corefile").write_text(corefile)
        self.processes.spawn("coredns", self.in_node(
            str(node_build.binary("coredns")), "-conf", str(cfg / "Corefile")), env=_env())
        # Fail-closed: while it is not running, queued connections are dropped.
        self.processes.spawn("network-policies", self.in_node(
            str(node_build.binary("kube-network-policies")), f"-kubeconfig={kubeconfig}",
            f"-node-name={net.name}", f"-nfqueue-id={POLICY_QUEUE}"), env=_env())

    def _traefik(self, deadline: float) -> None:
        assert self.ingress_port is not None
        admin = free_ports(1)[0]
        fallback = []
        if self.default_backend:
            # The lowest priority: only a host without a route of its own gets here
            # (a sleeping preview's Service has no endpoints, so it has no route).
            dynamic = {"http": {
                "routers": {"default-backend": {"rule": "PathPrefix(`/`)", "priority": 1,
                                                "service": "default-backend",
                                                "middlewares": ["wake-prefix"]}},
                "middlewares": {"wake-prefix": {"addPrefix": {"prefix": WAKE_PREFIX}}},
                "services": {"default-backend": {"loadBalancer": {
                    "servers": [{"url": self.default_backend}]}}}}}
            path = self.state_dir / "config" / "default-backend.yaml"
            path.write_text(yaml.safe_dump(dynamic))
            fallback = [f"--providers.file.filename={path}"]
        self.processes.spawn("traefik", [
            str(node_build.binary("traefik")),
            f"--entryPoints.web.address=127.0.0.1:{self.ingress_port}",
            f"--entryPoints.traefik.address=127.0.0.1:{admin}",
            "--ping=true", "--ping.entryPoint=traefik",
            "--providers.kubernetesingress=true",
            # It publishes an address once it has taken an Ingress (the engine waits for
            # it), and applies what it takes without waiting for more.
            "--providers.kubernetesingress.ingressendpoint.ip=127.0.0.1",
            "--providers.providersThrottleDuration=0s",
            # Keep-alive connections outlive a new deny policy (pitfall 11): none idle.
            "--serverstransport.maxidleconnsperhost=-1",
            "--global.checknewversion=false", "--global.sendanonymoususage=false",
            "--log.level=INFO",
            *fallback,
        ], env={**_env(), "KUBECONFIG": str(self.plane.kubeconfig)})
        self._wait("Traefik", deadline, lambda: self._http_ok(
            ["curl", "-sf", "--max-time", "1", f"http://127.0.0.1:{admin}/ping"]))

    # -- waiting

    def _node_ready(self) -> bool:
        status, body = self.plane.request("GET", f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    @staticmethod
    def _http_ok(argv: list[str]) -> bool:
        return subprocess.run(argv, capture_output=True).returncode == 0

    def _wait(self, what: str, deadline: float, check: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            self.processes.check_alive()
            with contextlib.suppress(OSError):
                if check():
                    return
            time.sleep(0.2)  # polling a condition with a deadline
        raise NodeError(f"timed out waiting for {what}; logs in {self.processes.log_dir}")


def open_preview_url(url: str, timeout: float = 5.0) -> httpx.Response:
    """GET a URL as a browser does: a `*.localhost` host is loopback (RFC 6761), which
    the machine's resolver may not know, so ask 127.0.0.1 with the Host header kept."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
        return httpx.get(urlunsplit(parts._replace(netloc=netloc)), timeout=timeout,
                         headers={"Host": parts.netloc})
    return httpx.get(url, timeout=timeout)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HTTP_PROXY",
                                                             "HTTPS_PROXY", "http_proxy")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _toml(config: Mapping[str, object], prefix: str = "") -> str:
    """The little TOML containerd's config needs: tables, strings, numbers, bools, lists."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, Mapping)]
    out = ([f"[{prefix}]"] if prefix and lines else []) + lines
    for key, sub in config.items():
        if isinstance(sub, Mapping):
            name = f'{prefix}.{json.dumps(key) if "." in key or ":" in key else key}'
            out.append(_toml(sub, name.lstrip(".")))
    return "\n".join(x for x in out if x) + "\n"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from stack import images, registry

    parser = argparse.ArgumentParser(prog="python -m stack.node", description=__doc__)
    parser.add_argument("cmd", choices=["up"])
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state: Path = args.state_dir
    with (ControlPlane(state / "kube", fake_nodes=0) as plane,
          registry.Registry(state / "registry") as reg):
        pause = images.push_pause_image(reg.host)
        with RealNode(plane, state / "node", sandbox_image=pause,
                      relayed_ports={"apiserver": plane.ports["apiserver"],
                                     "registry": reg.port}) as node:
            assert node.network is not None
            print(f"KUBECONFIG={plane.kubeconfig} slot {node.network.slot} ingress "
                  f"{node.ingress_url} image {pause}", flush=True)
            while not stop.wait(1.0):
                node.processes.check_alive()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
