"""The node's build, checked without Go: what goes into each wrapper module, which
binaries are (re)built, and what our two main.go files register and accept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stack import kube_build, node_build

# CoreDNS v1.15.0 core/dnsserver/zdirectives.go: the execution order of its plugins.
COREDNS_ORDER_V1_15_0 = [
    "root", "metadata", "geoip", "cancel", "proxyproto", "quic", "grpc_server", "https", "https3",
    "timeouts", "multisocket", "reload", "nsid", "bufsize", "bind", "debug", "trace", "ready",
    "health", "pprof", "shed", "prometheus", "errors", "log", "dnstap", "local", "dns64", "siit",
    "any", "chaos", "loadbalance", "tsig", "rewrite", "autopath", "acl", "cache", "header",
    "dnssec", "tls", "minimal", "template", "transfer", "dynupdate", "hosts", "route53", "azure",
    "clouddns", "k8s_external", "kubernetes", "file", "auto", "secondary", "etcd", "loop",
    "forward", "grpc", "erratic", "whoami", "on", "sign", "view", "nomad",
]

UPSTREAM_GOMOD = {
    kube_build.K8S_MODULE: "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n"
    "require k8s.io/api v0.0.0\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
    "\tk8s.io/kubelet => ./staging/src/k8s.io/kubelet\n)\n",
    node_build.COREDNS_MODULE: "module github.com/coredns/coredns\n\ngo 1.26.0\n\n"
    "require github.com/miekg/dns v1.1.68\n",
    node_build.KNP_MODULE: "module sigs.k8s.io/kube-network-policies\n\ngo 1.23.0\n\n"
    "require k8s.io/client-go v0.32.3\n",
    node_build.TRAEFIK_MODULE: "module github.com/traefik/traefik/v3\n\ngo 1.25.0\n\nrequire (\n"
    "\tgithub.com/gorilla/mux v1.8.1\n)\n\nreplace (\n"
    "\tgithub.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.2020\n"
    "\tgithub.com/gorilla/mux => github.com/containous/mux v0.0.0-2025 // a fork\n)\n",
}


def _coredns_main() -> str:
    return node_build.MAINS["coredns"].read_text()


def _coredns_plugins() -> tuple[list[str], list[str]]:
    """(plugin packages imported, directives set) of our CoreDNS main."""
    text = _coredns_main()
    imported = re.findall(r'^\s*_ "github\.com/coredns/coredns/plugin/(\w+)"', text, re.M)
    block = re.search(r"var directives = \[\]string\{(.*?)\}", text, re.S)
    assert block, "no directives list in the CoreDNS main"
    return imported, re.findall(r'"(\w+)"', block.group(1))


def test_coredns_main_has_what_cluster_dns_needs_and_no_forwarding() -> None:
    imported, directives = _coredns_plugins()
    needed = {"bind", "errors", "log", "health", "ready", "kubernetes", "cache"}
    assert needed <= set(directives)
    # Nothing that would send a query on: a name outside our zones goes nowhere.
    for sender in ("forward", "grpc", "etcd", "route53", "azure", "clouddns", "secondary"):
        assert sender not in imported and sender not in directives
        assert f"plugin/{sender}\"" not in _coredns_main()
    assert "core/plugin" not in _coredns_main()  # CoreDNS's import of every plugin
    # Every directive is compiled in, and every plugin imported can be used.
    assert sorted(imported) == sorted(directives)
    assert "dnsserver.SetDirectives(directives)" in _coredns_main()


def test_coredns_directives_keep_coredns_order() -> None:
    _, directives = _coredns_plugins()
    assert node_build.VERSIONS["coredns"] == "v1.15.0", "re-read zdirectives.go of the new version"
    assert all(d in COREDNS_ORDER_V1_15_0 for d in directives)
    assert directives == sorted(directives, key=COREDNS_ORDER_V1_15_0.index)


def test_knp_main_flags_are_the_documented_ones() -> None:
    text = node_build.MAINS["kube-network-policies"].read_text()
    defined = re.findall(r'flag\.(?:String|Int|Bool)\(\s*"([\w-]+)"', text)
    documented = re.findall(r"^//\t-([\w-]+)", text, re.M)
    assert set(defined) | {"v"} == set(documented)
    assert {"kubeconfig", "node-name", "nfqueue-id", "local-pods-only"} <= set(defined)
    assert re.search(r'"nfqueue-id", 100,', text)
    assert "NRIdisabled" not in text  # disabling NRI makes v0.8.0 panic on non-pod packets
    assert "InClusterConfig" not in text and "clientcmd.BuildConfigFromFlags" in text


def test_remote_replaces_keeps_module_redirects_only() -> None:
    gomod = ("replace github.com/a/b => github.com/c/b v1.2.3 // fork\n"
             "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
             "\tgithub.com/x/y v1.0.0 => github.com/z/y v1.0.1\n"
             "\treplacement.io/m => replacement.io/n v0.1.0\n)\n"
             "require github.com/replace/me v1.0.0\n")
    assert kube_build.remote_replaces(gomod) == {
        "github.com/a/b": "github.com/c/b v1.2.3",
        "github.com/x/y v1.0.0": "github.com/z/y v1.0.1",
        "replacement.io/m": "replacement.io/n v0.1.0",
    }


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str, str, str]]:
    """A cache in tmp_path, module downloads from UPSTREAM_GOMOD, and a `go build` that
    records (wrapper, binary, package, ldflags) and writes an empty binary."""
    monkeypatch.setenv("PREVIEW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "which", lambda _cmd: "/usr/bin/go")
    built: list[tuple[Path, str, str, str]] = []

    def download(module: str, version: str, cwd: Path) -> dict[str, str]:
        gomod = tmp_path / "proxy" / module / f"{version}.mod"
        gomod.parent.mkdir(parents=True, exist_ok=True)
        gomod.write_text(UPSTREAM_GOMOD[module])
        return {"GoMod": str(gomod), "Dir": str(gomod.parent)}

    def build_group(wrap: Path, packages: dict[str, str], ldflags: list[str],
                    bin_dir: Path) -> None:
        for name, package in packages.items():
            built.append((wrap, name, package, " ".join(ldflags)))
            (bin_dir / name).write_bytes(b"")

    monkeypatch.setattr(kube_build, "download_module", download)
    monkeypatch.setattr(kube_build, "build_group", build_group)
    monkeypatch.setattr(subprocess, "run", None)  # nothing may run go for real
    return built


def test_build_writes_each_wrapper_and_stamps_each_binary(
        fake_go: list[tuple[Path, str, str, str]]) -> None:
    assert sorted(node_build.missing()) == sorted(node_build.BINARIES)
    bin_dir = node_build.build()
    assert bin_dir == kube_build.cache_dir()
    wrappers = kube_build.cache_root() / "wrappers"
    where = {name: (wrap, package, ld) for wrap, name, package, ld in fake_go}
    assert sorted(where) == sorted(node_build.BINARIES)

    # kubelet and kube-proxy: the control plane's wrapper, its staging replaces and stamps.
    for name in ("kubelet", "kube-proxy"):
        wrap, package, ld = where[name]
        assert wrap == wrappers / "kubernetes"
        assert package == f"k8s.io/kubernetes/cmd/{name}"
        assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in ld
    k8s_mod = (wrappers / "kubernetes" / "go.mod").read_text()
    assert "\tk8s.io/kubelet => k8s.io/kubelet v0.36.3" in k8s_mod
    assert "godebug default=go1.26" in k8s_mod

    # Our mains: a module of ours requiring upstream, with our main.go and nothing else.
    for name, module, go_line in (("coredns", node_build.COREDNS_MODULE, "go 1.26.0"),
                                  ("kube-network-policies", node_build.KNP_MODULE, "go 1.23.0")):
        wrap, package, _ = where[name]
        assert wrap == wrappers / name
        assert package == f"preview-engine.local/{name}"
        gomod = (wrap / "go.mod").read_text()
        assert gomod.startswith(f"module preview-engine.local/{name}\n")
        assert go_line in gomod and f"require {module} {node_build.VERSIONS[name]}" in gomod
        assert "replace" not in gomod
        assert (wrap / "main.go").read_text() == node_build.MAINS[name].read_text()
    assert "coremain.GitCommit=v1.15.0" in where["coredns"][2]

    # Traefik: upstream's replace directives repeated, or the wrapper builds other code.
    wrap, package, ld = where["traefik"]
    assert package == "github.com/traefik/traefik/v3/cmd/traefik"
    assert "pkg/version.Version=v3.6.12" in ld
    gomod = (wrap / "go.mod").read_text()
    assert "\tgithub.com/gorilla/mux => github.com/containous/mux v0.0.0-2025\n" in gomod
    assert "github.com/abbot/go-http-auth => github.com/containous/go-http-auth" in gomod

    for name in node_build.BINARIES:
        assert node_build.binary(name) == bin_dir / name
        stamp = (bin_dir / f"{name}.version").read_text()
        assert stamp.startswith(node_build.VERSIONS[name])
    assert node_build.is_built() and node_build.missing() == []


def test_build_again_builds_only_what_changed(
        fake_go: list[tuple[Path, str, str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    node_build.build()
    fake_go.clear()
    node_build.build()
    assert fake_go == []

    # An edited main.go is another build of coredns; nothing else is rebuilt.
    edited = tmp_path / "main.go"
    edited.write_text(_coredns_main() + "\n// edited\n")
    monkeypatch.setitem(node_build.MAINS, "coredns", edited)
    assert node_build.missing() == ["coredns"]
    node_build.build()
    assert [name for _, name, _, _ in fake_go] == ["coredns"]
    assert (kube_build.cache_root() / "wrappers" / "coredns" / "main.go").read_text().endswith(
        "// edited\n")

    # Another version in a stamp, or a binary gone: rebuilt.
    (kube_build.cache_dir() / "traefik.version").write_text("v3.0.0")
    (kube_build.cache_dir() / "kubelet").unlink()
    assert node_build.missing() == ["kubelet", "traefik"]
    fake_go.clear()
    node_build.build()
    assert sorted(name for _, name, _, _ in fake_go) == ["kubelet", "traefik"]
