"""Named AES-256 keys: the newest encrypts, every one decrypts (rotation)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass


class KeyringError(ValueError):
    pass


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, bytes]
    current_id: str

    @classmethod
    def parse(cls, text: str, *, setting: str = "keys") -> Keyring:
        """Parse `id:base64key,id:base64key`; the last entry is the current key."""
        keys: dict[str, bytes] = {}
        current = ""
        for n, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), 1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not key_id:
                raise KeyringError(f"{setting}: entry {n} is not of the form id:base64key")
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise KeyringError(f"{setting}: key {key_id!r} is not valid base64") from None
            if len(key) != 32:
                raise KeyringError(
                    f"{setting}: key {key_id!r} is {len(key)} bytes; AES-256 needs 32"
                )
            keys[key_id] = key
            current = key_id
        if not keys:
            raise KeyringError(f"{setting}: no key configured")
        return cls(keys=keys, current_id=current)

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]

    def get(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyringError(f"unknown key id {key_id!r}") from None
