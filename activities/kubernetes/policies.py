"""The network policies of a preview's namespace: nothing in or out by default, then
exactly what a preview needs. Previews run the pull request's code, forks' included, so
egress is closed as well as ingress:

- in: from its own namespace, and from the ingress controller (its namespace's pods, or
  the addresses of a controller that is not a pod);
- out: to its own namespace (applications, container databases, caches), cluster DNS,
  and the addresses the engine and the blueprint allow (the preview database server,
  say); never another preview, never the cloud metadata address, which on EKS hands out
  the node's credentials.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from activities.kubernetes.api import Json, Ref
from domain.blueprint import EgressRule
from domain.resources import NamespaceSpec

METADATA = ipaddress.IPv4Network("169.254.169.254/32")
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def ip_block(cidr: str) -> Json:
    """An ipBlock peer; a range holding the metadata address gets it as an exception."""
    block: Json = {"cidr": cidr}
    network = ipaddress.IPv4Network(cidr)  # EgressRule admits IPv4 only
    if network != METADATA and network.supernet_of(METADATA):
        block["except"] = [str(METADATA)]
    return {"ipBlock": block}


def egress_rule(rule: EgressRule) -> Json:
    peer: Json = {"to": [ip_block(rule.cidr)]}
    if rule.ports:
        peer["ports"] = [{"protocol": "TCP", "port": port} for port in rule.ports]
    return peer


def network_policies(spec: NamespaceSpec, labels: Mapping[str, str]) -> list[tuple[Ref, Json]]:
    def policy(name: str, types: list[str], **rules: object) -> tuple[Ref, Json]:
        ref = Ref.of("NetworkPolicy", name, spec.name)
        return ref, ref.manifest(labels, spec={"podSelector": {}, "policyTypes": types,
                                               **rules})

    controller = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": spec.ingress_namespace}}},
        *(ip_block(cidr) for cidr in spec.ingress_cidrs)]
    dns = [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": spec.dns_namespace}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
        *(ip_block(cidr) for cidr in spec.dns_cidrs)]
    same: list[Json] = [{"podSelector": {}}]
    policies = [
        policy("default-deny-ingress", ["Ingress"]),
        policy("default-deny-egress", ["Egress"]),
        policy("allow-same-namespace", ["Ingress", "Egress"], ingress=[{"from": same}],
               egress=[{"to": same}]),
        policy("allow-from-ingress-controller", ["Ingress"], ingress=[{"from": controller}]),
        policy("allow-dns", ["Egress"], egress=[{"to": dns, "ports": DNS_PORTS}]),
        # Always there, empty when nothing is allowed: a redeploy that takes an address
        # away must not leave the old rule behind.
        # (no rules at all rather than an empty list, which the API does not keep)
        policy("allow-egress", ["Egress"],
               **({"egress": [egress_rule(r) for r in spec.egress]} if spec.egress else {})),
    ]
    return policies
