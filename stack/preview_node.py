"""The real node as the engine's previews use it: `registry.local` pulled from the local
registry, a host PostgreSQL server reachable from pods, the ingress's default backend
(the starter, which wakes a sleeping preview), and the images every preview of the
example blueprint needs besides the application's own (the pod sandbox and Redis).

`make run` (stack/run.py) and the benchmarks (bench/common.py's BenchStack) start it
the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stack import images
from stack.kube import ControlPlane
from stack.node import RealNode
from stack.registry import Registry


def start_preview_node(plane: ControlPlane, registry: Registry, state_dir: Path, *,
                       pod_services: Mapping[str, int],
                       default_backend: str | None = None, ingress_port: int | None = None,
                       slot: int | None = None) -> RealNode:
    """A started RealNode joined to `plane`, pulling `registry.local/...` from `registry`,
    with `pod_services` (name → host port, e.g. the preview database server) reachable
    from pods at its gateway; the blueprint's `library/redis:7.0` is pushed too. The
    caller stops it (`node.stop()`); it is stopped already if this raises. ingress_port and
    slot: where it should be (RealNode), as a restarted stack's node was."""
    node = RealNode(
        plane, state_dir, sandbox_image=images.push_pause_image(registry.host),
        relayed_ports={"apiserver": plane.ports["apiserver"], "registry": registry.port},
        registry_mirrors={"registry.local": registry.host},
        pod_services=pod_services, default_backend=default_backend,
        ingress_port=ingress_port, slot=slot)
    node.start()
    try:
        images.push_redis_image(registry.host)  # the example blueprint's library/redis:7.0
    except BaseException:
        node.stop()
        raise
    return node
