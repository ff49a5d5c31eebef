"""The real node's network: a network namespace joined to the host by one veth pair,
with guards so that no packet of the node or its pods can leave the machine.

The host keeps `ip_forward=0` and gets no firewall rule: only a route into the
namespace for the link and pod ranges, each shadowed by an `unreachable` route of
higher metric, so those addresses never follow the default route out if the veth goes.
Inside the namespace, before any pod runs: no default route, `unreachable` for the
Service range, and an nftables table whose forward chain drops everything but
pod↔pod and host→pod, and whose input chain lets pods reach the node only on the
ports of its relays and of cluster DNS. See /work/shared/real-node.md.

Everything is named from a slot number (0-7), so two stacks on one machine (the
tests and `make run`) each get their own, and a stack killed with SIGKILL is cleaned
up by the next one that takes its slot.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

SLOTS = 8
SERVICE_CIDR = "10.0.0.0/24"  # the control plane's --service-cluster-ip-range
GUARD_TABLE = "preview_node_guard"
POLICY_QUEUE = 100  # NFQUEUE number the NetworkPolicy enforcer reads


@dataclass(frozen=True)
class NodeNetwork:
    slot: int

    @property
    def name(self) -> str:
        """Node name, network namespace name and cgroup folder name."""
        return f"preview-node-{self.slot}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def host_if(self) -> str:
        return f"pvn{self.slot}h"

    @property
    def node_if(self) -> str:
        return f"pvn{self.slot}n"

    @property
    def host_ip(self) -> str:
        return f"10.87.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.87.{self.slot}.2"

    @property
    def link_cidr(self) -> str:
        return f"10.87.{self.slot}.0/30"

    @property
    def pod_cidr(self) -> str:
        return f"10.88.{self.slot}.0/24"

    @property
    def gateway(self) -> str:
        """The pods' bridge address: cluster DNS and the relays to host services."""
        return f"10.88.{self.slot}.1"

    # -- commands

    def in_netns(self, *argv: str) -> list[str]:
        # nsenter, not `ip netns exec`: the latter remounts /sys for its command, which
        # hides the cgroup mounts from runc (real-node.md, pitfall 5).
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]

    def create(self, relay_ports: Iterable[int]) -> None:
        """The namespace, the link, the routes and the guards; before any process runs."""
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if,
            "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        for cidr in (self.pod_cidr, self.link_cidr):
            run("ip", "route", "add", "unreachable", cidr, "metric", "4000")
        run("ip", "route", "add", self.pod_cidr, "via", self.node_ip, "dev", self.host_if)
        ns = self.in_netns
        run(*ns("ip", "link", "set", "lo", "up"))
        run(*ns("ip", "addr", "add", f"{self.node_ip}/30", "dev", self.node_if))
        run(*ns("ip", "link", "set", self.node_if, "up"))
        # The pods' bridge exists before the first pod, so CoreDNS and the relays can bind
        # the gateway address; the CNI bridge plugin adopts it.
        run(*ns("ip", "link", "add", "cni0", "type", "bridge"))
        run(*ns("ip", "addr", "add", f"{self.gateway}/24", "dev", "cni0"))
        run(*ns("ip", "link", "set", "cni0", "up"))
        run(*ns("ip", "route", "add", "unreachable", SERVICE_CIDR))
        # Every refused destination answers "unreachable" at once, however many were
        # refused this second (a setting of this namespace only, not the machine's).
        run(*ns("sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"))
        run(*ns("nft", "-f", "-"), input=self.guard_ruleset(relay_ports))
        # The NetworkPolicy enforcer's hook, with iptables: this kernel has no nftables
        # `queue` expression (real-node.md, pitfall 7). uid 0 is the kubelet's probes.
        # Connections from pods to the node itself (DNS, the relays) are judged too, so a
        # policy that forgets DNS or the database fails here as it would in a cluster.
        queue = ["-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE", "--queue-num",
                 str(POLICY_QUEUE)]
        not_root = ["-m", "owner", "!", "--uid-owner", "0"]
        for direction in ("-s", "-d"):
            run(*ns("iptables", "-t", "mangle", "-A", "POSTROUTING", direction, self.pod_cidr,
                    *not_root, *queue))
        run(*ns("iptables", "-t", "mangle", "-A", "INPUT", "-s", self.pod_cidr, *queue))

    def guard_ruleset(self, relay_ports: Iterable[int]) -> str:
        ports = ", ".join(str(p) for p in sorted({53, *relay_ports}))
        pods = self.pod_cidr
        return f"""
table inet {GUARD_TABLE} {{
    chain forward {{
        type filter hook forward priority -10; policy drop;
        ct state established,related accept
        ip saddr {pods} ip daddr {pods} accept
        iifname "{self.node_if}" ip saddr {self.host_ip} ip daddr {pods} accept
    }}
    chain input {{
        type filter hook input priority -10; policy accept;
        ip saddr {pods} ct state established,related accept
        ip saddr {pods} ip daddr {self.gateway} udp dport 53 accept
        ip saddr {pods} ip daddr {self.gateway} tcp dport {{ {ports} }} accept
        ip saddr {pods} drop
    }}
}}
"""

    def remove(self) -> None:
        """Everything create() made, whatever is left of it. Idempotent."""
        quiet("ip", "netns", "del", self.name)
        quiet("ip", "link", "del", self.host_if)
        for cidr in (self.pod_cidr, self.link_cidr):
            quiet("ip", "route", "del", "unreachable", cidr, "metric", "4000")
        quiet("ip", "route", "del", self.pod_cidr, "via", self.node_ip)

    def leftovers(self) -> list[str]:
        """What of this node's network is still on the host (empty once removed)."""
        found: list[str] = []
        if self.name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True).stdout.split():
            found.append(f"network namespace {self.name}")
        if subprocess.run(["ip", "link", "show", self.host_if], capture_output=True
                          ).returncode == 0:
            found.append(f"interface {self.host_if}")
        routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                                text=True).stdout
        for cidr in (self.pod_cidr, self.link_cidr):
            if cidr in routes:
                found.append(f"route to {cidr}")
        return found


def run(*argv: str, input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def quiet(*argv: str) -> None:
    subprocess.run(argv, capture_output=True)
