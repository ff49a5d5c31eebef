"""stack/ports.py's PortBook: a state folder's servers get their ports back, a port taken
meanwhile is replaced and reported, and a file cut short costs the ports, not the start."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from stack.ports import PortBook


def unused_port() -> int:
    """A port free now, as a stopped stack's server left it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ports_come_back_and_a_taken_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ports.json"
    database, ingress = unused_port(), unused_port()
    path.write_text(json.dumps({"postgres": database, "ingress": ingress, "node-slot": 3}))
    with socket.socket() as squatter:  # someone else took the ingress port meanwhile
        squatter.bind(("127.0.0.1", ingress))
        squatter.listen()
        book = PortBook(path)
        assert book.port("postgres") == database
        moved_to = book.port("ingress")
    assert moved_to != ingress and book.moved == {"ingress": (ingress, moved_to)}
    assert book.preferred("node-slot") == 3 and book.preferred("registry") is None
    registry = book.port("registry")
    assert json.loads(path.read_text()) == {"ingress": moved_to, "node-slot": 3,
                                            "postgres": database, "registry": registry}
    assert not list(tmp_path.glob("*.partial"))  # written whole, then renamed


def test_a_file_cut_short_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "ports.json"
    path.write_text('{"postgres": 54')
    book = PortBook(path)
    assert book.unreadable and book.known == {}
    book.port("postgres")
    assert set(json.loads(path.read_text())) == {"postgres"}
