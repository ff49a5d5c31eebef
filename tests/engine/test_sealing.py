"""Envelope sealing of secrets, with local master keys and with an AWS KMS key (moto)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.keyring import Keyring
from engine.sealing import KMS_CONTEXT, KmsMasterKey, Sealer, UnsealError
from engine.settings import Settings
from tests.plugins.moto import MotoServer


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


LOCAL = Sealer(Keyring.parse(f"old:{key(1)}"))


@pytest.fixture
def kms_key(moto_server: MotoServer) -> tuple[str, Any]:
    client = moto_server.client("kms")
    return client.create_key(Description="preview secrets")["KeyMetadata"]["KeyId"], client


def arn(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])


@given(st.text(max_size=200))
@settings(max_examples=25)
def test_local_sealing_round_trips_with_fresh_keys_and_nonces(value: str) -> None:
    one, two = LOCAL.seal(value), LOCAL.seal(value)
    assert LOCAL.unseal(one) == LOCAL.unseal(two) == value
    assert one.nonce != two.nonce and one.wrapped_key != two.wrapped_key


def test_kms_wraps_every_data_key(kms_key: tuple[str, Any]) -> None:
    key_id, client = kms_key
    sealer = Sealer(Keyring.parse(f"old:{key(1)}"), KmsMasterKey(key_id, client))
    sealed = sealer.seal("hunter2")
    assert sealed.key_id == f"kms:{arn(client, key_id)}"
    assert sealer.unseal(sealed) == "hunter2"
    # Only KMS can unwrap it: not the local keys, and not KMS without our context.
    with pytest.raises(UnsealError, match="no KMS key is configured"):
        LOCAL.unseal(sealed)
    blob = base64.b64decode(sealed.wrapped_key)
    assert client.decrypt(CiphertextBlob=blob, EncryptionContext=KMS_CONTEXT)["Plaintext"]
    with pytest.raises(client.exceptions.InvalidCiphertextException):
        client.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "something else"})


def test_switching_to_kms_keeps_old_values_and_rewraps_them(kms_key: tuple[str, Any]) -> None:
    key_id, client = kms_key
    before = LOCAL.seal("sealed before KMS")
    sealer = Sealer(Keyring.parse(f"old:{key(1)}"), KmsMasterKey(key_id, client))
    assert sealer.unseal(before) == "sealed before KMS"
    moved = sealer.rewrap(before)
    assert moved.key_id == f"kms:{arn(client, key_id)}" and sealer.rewrap(moved) is moved
    assert (moved.nonce, moved.ciphertext) == (before.nonce, before.ciphertext)
    kms_only = Sealer(Keyring.parse(f"unrelated:{key(9)}"), KmsMasterKey(key_id, client))
    assert kms_only.unseal(moved) == "sealed before KMS"


def test_a_refused_unwrap_fails_without_saying_the_value(kms_key: tuple[str, Any]) -> None:
    key_id, client = kms_key
    sealer = Sealer(Keyring.parse(f"old:{key(1)}"), KmsMasterKey(key_id, client))
    sealed = sealer.seal("do-not-print-me")
    blob = bytearray(base64.b64decode(sealed.wrapped_key))
    blob[-1] ^= 1  # a wrapped key that was tampered with
    tampered = sealed.model_copy(update={"wrapped_key": base64.b64encode(blob).decode()})
    with pytest.raises(UnsealError, match="InvalidCiphertextException") as refused:
        sealer.unseal(tampered)
    assert key_id in str(refused.value) and "do-not-print-me" not in str(refused.value)
    assert sealed.ciphertext not in str(refused.value)


def test_settings_choose_kms(kms_key: tuple[str, Any], moto_server: MotoServer,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, _ = kms_key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings(kms_key_id=key_id, aws_endpoint_url=moto_server.endpoint_url)
    sealer = Sealer.from_settings(settings)
    assert sealer.current_id == f"kms:{arn(moto_server.client('kms'), key_id)}"
    assert sealer.unseal(sealer.seal("x")) == "x"
    assert Sealer.from_settings(Settings()).current_id == "master-1"


def test_an_alias_moved_to_a_new_key_keeps_old_values_and_marks_them_stale(
    kms_key: tuple[str, Any],
) -> None:
    first, client = kms_key
    alias = f"alias/previews-{first[:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=first)
    before = Sealer(Keyring.parse(f"old:{key(1)}"), KmsMasterKey(alias, client)).seal("v1")
    assert before.key_id == f"kms:{arn(client, first)}"  # the key itself, not the alias

    second = client.create_key()["KeyMetadata"]["KeyId"]
    client.update_alias(AliasName=alias, TargetKeyId=second)
    after = Sealer(Keyring.parse(f"old:{key(1)}"), KmsMasterKey(alias, client))
    assert after.unseal(before) == "v1"  # decrypted by the key that wrapped it
    moved = after.rewrap(before)
    assert moved.key_id == f"kms:{arn(client, second)}" and after.unseal(moved) == "v1"
