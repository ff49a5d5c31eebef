"""An XFS image with reflinks under the local stack's PostgreSQL: copy-on-write clones.

PostgreSQL 18 clones a database in constant time (`file_copy_method = clone`) when its
data directory is on a filesystem with reflinks. Where this process may mount one (root,
loop devices, `mkfs.xfs` from xfsprogs), the stack makes a sparse image file in its state
folder, formats it XFS with `reflink=1` and mounts it on a loop device (`-o loop`:
autoclear, so the unmount frees the device; `discard`: space freed inside goes back to
the host). Elsewhere the data directory is a plain folder, and clones are copies.

Nothing outlives the stack: `unmount()` on stop; a guard process (`python -m
stack.reflink guard`, in a session of its own so Ctrl-C does not reach it) waits for the
process that mounted the image and, if it died without unmounting (kill -9), stops the
PostgreSQL still running there and unmounts; and `mount()` first clears whatever an
earlier run of the same state folder left (if its guard died too).

    PREVIEW_PG_REFLINK=auto|on|off   auto (default): the image where possible;
                                     on: fail where impossible; off: a plain folder
    PREVIEW_PG_REFLINK_SIZE=4G       the image's size (sparse: it takes what is written)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

IMAGE_NAME = "reflink.img"
MOUNT_NAME = "reflink"
LOCK_NAME = "reflink.lock"
LOCK_WAIT_SECONDS = 30.0  # a guard still clearing what a killed run left
DEFAULT_SIZE = "4G"
COW_EXTENT_SIZE = "8k"
TOOLS = ("mkfs.xfs", "mount", "umount", "losetup")


class FolderInUse(RuntimeError):
    """Another stack holds this state folder: nothing may fall back around it."""


def reflink_mode() -> str:
    mode = os.environ.get("PREVIEW_PG_REFLINK", "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"PREVIEW_PG_REFLINK must be auto, on or off, not {mode!r}")
    return mode


def unavailable_reason() -> str | None:
    """Why this process cannot mount an XFS image, or None when it can (probably: a
    container without CAP_SYS_ADMIN only shows at the mount itself)."""
    if not sys.platform.startswith("linux"):
        return "loop-mounted XFS images are Linux only"
    if os.geteuid() != 0:
        return "mounting a loop device needs root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install xfsprogs)"
    return None


def mount_points() -> set[Path]:
    """Every mount point of this mount namespace (/proc/mounts escapes blanks as \\040)."""
    found = set()
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            found.add(Path(fields[1].encode().decode("unicode_escape")))
    return found


def loop_devices_of(image: Path) -> list[str]:
    """Loop devices whose backing file is `image`."""
    if shutil.which("losetup") is None or not image.exists():
        return []
    done = subprocess.run(["losetup", "--noheadings", "--output", "NAME", "--associated",
                           str(image)], capture_output=True, text=True)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling a condition with a deadline
    return True


def stop_postmaster(pgdata: Path, timeout: float = 30.0) -> None:
    """Stop the PostgreSQL whose data directory this is (its postmaster.pid), if it runs:
    fast shutdown, then immediate, then SIGKILL (its backends follow the postmaster)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        # A stale file's pid may be anyone's now: the postmaster works in its data
        # directory, so only a process there is it.
        if Path(f"/proc/{pid}/cwd").resolve() != pgdata.resolve():
            return
    except (OSError, ValueError, IndexError):
        return
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, timeout / 3):
            return


class ReflinkVolume:
    """The image `<folder>/reflink.img`, mounted on `<folder>/reflink`."""

    def __init__(self, folder: Path, size: str | None = None, *, direct_io: bool = False,
                 ) -> None:
        # Absolute: the guard runs from the repository's root, and must find this folder.
        self.folder = folder.resolve()
        # Direct I/O on the loop device: the image's data is not cached twice (in this
        # filesystem and in the host's page cache of the image file); benchmarks want it.
        self.direct_io = direct_io
        self.image = folder / IMAGE_NAME
        self.mount_point = folder / MOUNT_NAME
        self.size = size or os.environ.get("PREVIEW_PG_REFLINK_SIZE") or DEFAULT_SIZE
        self._guard: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    def _take_lock(self) -> None:
        """One user of the folder at a time: held by this process and its guard (who
        inherits it), so a second stack on the same folder cannot clear a live one's
        mount, and waits for a guard still clearing a killed one's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise FolderInUse(f"{self.folder} is in use by another stack (its "
                                       f"{LOCK_NAME} is locked); stop that one first") from None
                time.sleep(0.2)  # polling a lock with a deadline
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def mounted(self) -> bool:
        return self.mount_point.resolve() in mount_points()

    def mount(self) -> Path:
        """Mount the image (made on first use) and start its guard; the mount point."""
        self._take_lock()
        try:
            return self._mount()
        except BaseException:
            self._release_lock()
            raise

    def _mount(self) -> Path:
        self.clear_stale()
        self.mount_point.mkdir(exist_ok=True)
        if not self.image.exists():
            subprocess.run(["truncate", "-s", self.size, str(self.image)], check=True)
            try:
                _run(["mkfs.xfs", "-q", "-m", "reflink=1", str(self.image)])
            except BaseException:
                self.image.unlink(missing_ok=True)
                raise
        _run(["mount", "-t", "xfs", "-o", "loop,discard", str(self.image),
              str(self.mount_point)])
        try:
            # The guard first: whatever fails or is interrupted from here on, the mount
            # does not outlive this process.
            self._guard = subprocess.Popen(
                [sys.executable, "-m", "stack.reflink", "guard", "--pid", str(os.getpid()),
                 "--folder", str(self.folder)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, cwd=Path(__file__).resolve().parents[1],
                pass_fds=(self._lock,) if self._lock is not None else (),
            )
            if self.direct_io:
                for device in loop_devices_of(self.image):
                    _run(["losetup", "--direct-io=on", device])
            if shutil.which("xfs_io"):
                # Copy-on-write in 8 kB (PostgreSQL's page), inherited by every file made
                # below: XFS's default reserves 128 kB at each first write to a shared page
                # and frees the rest only after 30 minutes.
                _run(["xfs_io", "-c", f"cowextsize {COW_EXTENT_SIZE}", str(self.mount_point)])
        except BaseException:
            self.unmount()
            raise
        return self.mount_point

    def unmount(self, timeout: float = 20.0) -> None:
        """Unmount and free the loop device; the guard then has nothing left to do, and
        the folder is free for the next stack. Nothing, unless this volume mounted it."""
        if self._lock is None:
            return  # another stack's (or nobody's): not ours to unmount
        self._detach(timeout)
        if self._guard is not None:
            with contextlib.suppress(ProcessLookupError):
                self._guard.terminate()
            self._guard.wait()
            self._guard = None
        self._release_lock()

    def _detach(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.mounted:
            done = subprocess.run(["umount", str(self.mount_point)], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                # Still busy: detach it now, the kernel frees it with its last user.
                _run(["umount", "--lazy", str(self.mount_point)])
                break
            time.sleep(0.2)  # a process of ours is still closing files: polling
        for device in loop_devices_of(self.image):
            subprocess.run(["losetup", "--detach", device], capture_output=True)

    def clear_stale(self) -> None:
        """What an earlier run of this folder left mounted: stop its server, unmount
        (the caller holds the folder: mount() took its lock, a guard inherited it)."""
        if self.mounted:
            stop_postmaster(self.mount_point / "pgdata")
        self._detach()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")


def guard(pid: int, folder: Path) -> None:
    """Wait until process `pid` ends; then clear what it left mounted (nothing, when it
    stopped as it should: it terminates this guard after unmounting)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:
        watched = None
    if watched is not None:
        select.select([watched], [], [])
    ReflinkVolume(folder).clear_stale()


def main() -> None:
    parser = argparse.ArgumentParser(description="the guard of a reflink volume")
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("guard", help="unmount after process PID ends")
    watch.add_argument("--pid", type=int, required=True)
    watch.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    guard(args.pid, args.folder)


if __name__ == "__main__":
    main()
