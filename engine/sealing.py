"""Envelope encryption of secret values (AES-256-GCM).

Each value gets a fresh data key and nonce; the data key is wrapped by a master key
named by id. Rotating the master key re-wraps data keys without decrypting values.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.secrets import SealedValue
from engine.keyring import Keyring
from engine.settings import Settings


class UnsealError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Sealer:
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        return cls(Keyring.parse(settings.master_keys.get_secret_value(),
                                 setting="PREVIEW_MASTER_KEYS"))

    def seal(self, value: str) -> SealedValue:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce, key_nonce = os.urandom(12), os.urandom(12)
        ciphertext = AESGCM(data_key).encrypt(nonce, value.encode(), None)
        key_id = self._keyring.current_id
        wrapped = AESGCM(self._keyring.current).encrypt(key_nonce, data_key, key_id.encode())
        return SealedValue(
            key_id=key_id,
            wrapped_key=_b64(key_nonce + wrapped),
            nonce=_b64(nonce),
            ciphertext=_b64(ciphertext),
        )

    def _data_key(self, sealed: SealedValue) -> bytes:
        blob = base64.b64decode(sealed.wrapped_key)
        try:
            master = self._keyring.get(sealed.key_id)
            return AESGCM(master).decrypt(blob[:12], blob[12:], sealed.key_id.encode())
        except (InvalidTag, KeyError, ValueError) as error:
            # Never include the ciphertext or key material in the message.
            raise UnsealError(f"cannot unwrap data key sealed under {sealed.key_id!r}") from error

    def unseal(self, sealed: SealedValue) -> str:
        data_key = self._data_key(sealed)
        try:
            plain = AESGCM(data_key).decrypt(
                base64.b64decode(sealed.nonce), base64.b64decode(sealed.ciphertext), None
            )
        except InvalidTag as error:
            raise UnsealError("sealed value is corrupt") from error
        return plain.decode()

    def rewrap(self, sealed: SealedValue) -> SealedValue:
        """Wrap the same data key under the current master key; the value stays sealed."""
        if sealed.key_id == self._keyring.current_id:
            return sealed
        data_key = self._data_key(sealed)
        key_nonce, key_id = os.urandom(12), self._keyring.current_id
        wrapped = AESGCM(self._keyring.current).encrypt(key_nonce, data_key, key_id.encode())
        return sealed.model_copy(
            update={"key_id": key_id, "wrapped_key": _b64(key_nonce + wrapped)}
        )
