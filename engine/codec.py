"""AES-256-GCM payload codec: Temporal's server and its history hold ciphertext only."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from engine.keyring import Keyring

ENCODING = b"binary/encrypted"


class CodecError(ValueError):
    """A payload that cannot be decrypted here: unknown key, or not our ciphertext."""

KEY_ID = "encryption-key-id"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key_id = self._keyring.current_id
        cipher = self._ciphers[key_id]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(12)
            # The key id is bound as associated data so a payload cannot be relabelled.
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), key_id.encode())
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID: key_id.encode()},
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)  # written before encryption was on
                continue
            try:
                key_id = payload.metadata[KEY_ID].decode()
            except (KeyError, UnicodeDecodeError):
                raise CodecError("encrypted payload without a readable key id") from None
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                raise CodecError(f"payload encrypted with unknown key id {key_id!r}")
            nonce, sealed = payload.data[:12], payload.data[12:]
            try:
                decoded.append(Payload.FromString(cipher.decrypt(nonce, sealed, key_id.encode())))
            except (InvalidTag, ValueError, DecodeError):  # ValueError: a truncated nonce
                raise CodecError(f"payload under key {key_id!r} is corrupt or forged") from None
        return decoded
