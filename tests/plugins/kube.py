"""A real Kubernetes control plane for the test session (see stack/kube.py).

`kube_cluster` starts etcd, kube-apiserver, controller-manager, scheduler and
kwok on free loopback ports (building the binaries first if they are missing),
or, when KUBECONFIG_TEST is set, uses that existing cluster instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from stack import kube

Kubectl = Callable[..., str]


@dataclass(frozen=True)
class KubeCluster:
    kubeconfig: Path
    kubectl_path: Path | None = None

    def api_client(self) -> k8s_client.ApiClient:
        """A fresh ApiClient bound to this cluster only (never the global default)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        """Run kubectl against this cluster from outside the code under test; stdout."""
        if self.kubectl_path is None:
            pytest.skip(
                "no kubectl binary: run `python -m stack.kube build` or put kubectl on PATH"
            )
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc.stdout


def _find_kubectl() -> Path | None:
    built = kube.cache_dir() / "kubectl"
    if built.is_file():
        return built
    found = shutil.which("kubectl")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    existing = os.environ.get("KUBECONFIG_TEST")
    if existing:
        yield KubeCluster(kubeconfig=Path(existing), kubectl_path=_find_kubectl())
        return
    if kube.missing_binaries():
        if shutil.which("go") is None:
            pytest.skip(
                f"control-plane binaries missing in {kube.cache_dir()} and no `go` to build them; "
                "set KUBECONFIG_TEST to use an existing cluster"
            )
        # A cold build takes 10-25 minutes; `python -m stack.kube build` beforehand
        # keeps it out of the test timeout.
        kube.build()
    state_dir = Path(tempfile.mkdtemp(prefix="preview-test-kube-"))
    plane = kube.ControlPlane(state_dir)
    try:
        plane.start()
        yield KubeCluster(kubeconfig=plane.kubeconfig, kubectl_path=_find_kubectl())
    finally:
        plane.stop()
        # KEEP_KUBE_STATE=1 keeps logs, PKI and etcd data for debugging.
        if os.environ.get("KEEP_KUBE_STATE"):
            print(f"kube control plane state kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kubectl(kube_cluster: KubeCluster) -> Kubectl:
    """`kubectl("get", "ns", "-o", "name")` -> stdout, against the test cluster."""
    return kube_cluster.kubectl
