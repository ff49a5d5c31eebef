"""Envelope encryption of secret values (AES-256-GCM).

Each value gets a fresh data key and nonce; the data key is wrapped by a master key
named by id. Rotating the master key re-wraps data keys without decrypting values.

The master key is either local (PREVIEW_MASTER_KEYS, newest wraps) or an AWS KMS key
(PREVIEW_KMS_KEY_ID): then KMS makes and wraps every data key, the key id is
`kms:<key>`, and the local keys only unwrap values sealed before the switch (re-wrap
them with `preview secrets rewrap`).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.secrets import SealedValue
from engine.keyring import Keyring
from engine.settings import Settings

KMS_PREFIX = "kms:"
# Bound into every KMS ciphertext: a data key wrapped for us cannot be unwrapped as
# anything else's, nor theirs as ours.
KMS_CONTEXT = {"purpose": "preview-engine-secret"}


class UnsealError(ValueError):
    pass


class KmsMasterKey:
    """An AWS KMS key that makes and wraps data keys (boto3 KMS client injected)."""

    def __init__(self, key_id: str, client: Any) -> None:
        self.key_id = key_id  # as configured: an id, an ARN or an alias
        self.client = client
        self._arn: str | None = None

    @property
    def arn(self) -> str:
        """The key's ARN, resolved once: values record the key itself, so moving an alias
        to a new key leaves older values readable and marks them for re-wrapping."""
        if self._arn is None:
            self._arn = str(self.client.describe_key(KeyId=self.key_id)["KeyMetadata"]["Arn"])
        return self._arn

    @property
    def id(self) -> str:
        return KMS_PREFIX + self.arn

    def new_data_key(self) -> tuple[bytes, bytes]:
        """(plaintext data key, its KMS-wrapped form)."""
        made = self.client.generate_data_key(KeyId=self.arn, KeySpec="AES_256",
                                             EncryptionContext=KMS_CONTEXT)
        return made["Plaintext"], made["CiphertextBlob"]

    def wrap(self, data_key: bytes) -> bytes:
        wrapped: bytes = self.client.encrypt(KeyId=self.arn, Plaintext=data_key,
                                             EncryptionContext=KMS_CONTEXT)["CiphertextBlob"]
        return wrapped

    def unwrap(self, key_id: str, blob: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            recorded = key_id.removeprefix(KMS_PREFIX)
            # Naming the key guards against a blob of another key; only an ARN names one
            # for good (an alias may have moved since).
            named = {"KeyId": recorded} if recorded.startswith("arn:") else {}
            plain: bytes = self.client.decrypt(
                CiphertextBlob=blob, EncryptionContext=KMS_CONTEXT, **named)["Plaintext"]
            return plain
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise UnsealError(f"KMS refused to unwrap a data key sealed under {key_id!r} "
                              f"({code})") from None
        except BotoCoreError as error:
            raise UnsealError(f"KMS unreachable unwrapping a data key sealed under "
                              f"{key_id!r}: {type(error).__name__}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Sealer:
    def __init__(self, keyring: Keyring, kms: KmsMasterKey | None = None) -> None:
        self._keyring = keyring
        self._kms = kms

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        keyring = Keyring.parse(settings.master_keys.get_secret_value(),
                                setting="PREVIEW_MASTER_KEYS")
        if not settings.kms_key_id:
            return cls(keyring)
        import boto3
        from botocore.config import Config

        # Short timeouts: a secret write or unseal should fail fast, not hang, when KMS
        # is unreachable.
        client = boto3.client("kms", region_name=settings.aws_region,
                              endpoint_url=settings.aws_endpoint_url,
                              config=Config(connect_timeout=5, read_timeout=10,
                                            retries={"max_attempts": 3, "mode": "standard"}))
        return cls(keyring, KmsMasterKey(settings.kms_key_id, client))

    @property
    def current_id(self) -> str:
        return self._kms.id if self._kms else self._keyring.current_id

    def seal(self, value: str) -> SealedValue:
        nonce = os.urandom(12)
        if self._kms:
            data_key, wrapped_key = self._kms.new_data_key()
        else:
            data_key = AESGCM.generate_key(bit_length=256)
            wrapped_key = self._wrap_locally(data_key)
        ciphertext = AESGCM(data_key).encrypt(nonce, value.encode(), None)
        return SealedValue(
            key_id=self.current_id,
            wrapped_key=_b64(wrapped_key),
            nonce=_b64(nonce),
            ciphertext=_b64(ciphertext),
        )

    def _wrap_locally(self, data_key: bytes) -> bytes:
        key_nonce, key_id = os.urandom(12), self._keyring.current_id
        return key_nonce + AESGCM(self._keyring.current).encrypt(key_nonce, data_key,
                                                                 key_id.encode())

    def _data_key(self, sealed: SealedValue) -> bytes:
        blob = base64.b64decode(sealed.wrapped_key)
        if sealed.key_id.startswith(KMS_PREFIX):
            if self._kms is None:
                raise UnsealError(f"data key sealed under {sealed.key_id!r}, and no KMS key "
                                  "is configured (PREVIEW_KMS_KEY_ID)")
            return self._kms.unwrap(sealed.key_id, blob)
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
        if sealed.key_id == self.current_id:
            return sealed
        data_key = self._data_key(sealed)
        wrapped = self._kms.wrap(data_key) if self._kms else self._wrap_locally(data_key)
        return sealed.model_copy(
            update={"key_id": self.current_id, "wrapped_key": _b64(wrapped)}
        )
