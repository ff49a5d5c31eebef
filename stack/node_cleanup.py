"""Leaving nothing behind: what a real node put on the machine, and its removal.

A node records where it put things (`/run/preview-engine/<node>.json`) before it makes
them, so whoever takes its slot next, after a clean stop or a `kill -9` of the stack,
can remove every process, network namespace, route and cgroup it left.
Mounts need no list: they were all made in the node's own mount namespace, which goes
with its last process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from stack.node_net import NodeNetwork

CGROUP_FS = Path("/sys/fs/cgroup")
RUN_DIR = Path("/run/preview-engine")


@dataclass(frozen=True)
class NodeRecord:
    slot: int
    state_dir: str
    cgroup_root: str  # kubelet's cgroupRoot, the same path in every hierarchy
    created: tuple[str, ...] = ()  # cgroup folders made on the way to it, to remove too

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(slot=int(data["slot"]), state_dir=str(data["state_dir"]),
                   cgroup_root=str(data["cgroup_root"]),
                   created=tuple(str(c) for c in data.get("created", ())))

    @property
    def network(self) -> NodeNetwork:
        return NodeNetwork(self.slot)

    def cgroup_dirs(self) -> list[Path]:
        """The node's cgroup folder in each hierarchy (existing or not)."""
        if not self.cgroup_root:
            return []
        relative = self.cgroup_root.strip("/")
        return [h / relative for h in sorted(CGROUP_FS.iterdir()) if h.is_dir()]

    def create_cgroups(self) -> NodeRecord:
        """The cgroup root in every hierarchy. In the memory one it sits under ours, so
        pods are charged inside our limit; elsewhere the path is new. Nothing existing
        is moved or changed (real-node.md, pitfall 4). Returns the record with what was
        made on the way."""
        created: list[str] = []
        for folder in self.cgroup_dirs():
            hierarchy = CGROUP_FS / folder.relative_to(CGROUP_FS).parts[0]
            path = hierarchy
            for part in folder.relative_to(hierarchy).parts:
                parent, path = path, path / part
                if path.exists():
                    continue
                path.mkdir()
                if path != folder:
                    created.append(str(path))
                if hierarchy.name == "cpuset":  # a new cpuset starts empty: inherit
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (path / knob).write_text((parent / knob).read_text())
        return replace(self, created=tuple(created))


def node_pids(record: NodeRecord) -> set[int]:
    """Every process of the node: in its network namespace, or in its cgroups (pods)."""
    pids: set[int] = set()
    out = subprocess.run(["ip", "netns", "pids", record.network.name], capture_output=True,
                         text=True).stdout
    pids.update(int(p) for p in out.split())
    for folder in record.cgroup_dirs():
        if not folder.exists():
            continue
        for procs in folder.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    pids.discard(os.getpid())
    return pids


def leftovers(record: NodeRecord) -> list[str]:
    """What of the node is still on the machine; empty after clean_slot()."""
    found = [f"process {pid}" for pid in sorted(node_pids(record))]
    found += record.network.leftovers()
    found += [f"cgroup {d}" for d in record.cgroup_dirs() if d.exists()]
    if (RUN_DIR / record.network.name).exists():
        found.append(f"socket folder {RUN_DIR / record.network.name}")
    # A folder made on the way is shared with a second node of the same process: only
    # one with no cgroup left under it counts.
    found += [f"cgroup {d}" for d in record.created
              if Path(d).exists() and not any(p.is_dir() for p in Path(d).iterdir())]
    return found


def clean_slot(record: NodeRecord, timeout: float = 20.0) -> None:
    """Kill, unlink and remove whatever the node left. Idempotent; raises if a trace
    outlives the timeout, naming it."""
    deadline = time.monotonic() + timeout
    while pids := node_pids(record):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"node processes would not die: {sorted(pids)}")
        time.sleep(0.05)  # polling until the kernel has reaped them
    record.network.remove()
    for folder in record.cgroup_dirs():
        _remove_cgroup_tree(folder, deadline)
    for made in sorted(record.created, key=len, reverse=True):
        with contextlib.suppress(OSError):  # not ours to keep, but only if empty
            Path(made).rmdir()
    with contextlib.suppress(OSError):
        Path("/run/containerd").rmdir()  # only ever an empty mount point on the host
    shutil.rmtree(RUN_DIR / record.network.name, ignore_errors=True)  # its sockets
    left = leftovers(record)
    if left:
        raise RuntimeError(f"the node left {', '.join(left)}")
    (RUN_DIR / f"{record.network.name}.json").unlink(missing_ok=True)


def _remove_cgroup_tree(folder: Path, deadline: float) -> None:
    if not folder.exists():
        return
    # Deepest first; a cgroup can be removed once its processes are gone (EBUSY until
    # the kernel has finished with them).
    below = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                   reverse=True)
    for path in [*below, folder]:
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
