"""The payload codec: the server's history holds ciphertext only, and keys rotate."""

from __future__ import annotations

import base64
import os
import uuid

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Worker

from engine.codec import CodecError, EncryptionCodec
from engine.keyring import Keyring
from tests.engine.secret_echo import Carrier, SecretEchoWorkflow, echo_secret


def keyring(*ids: str) -> Keyring:
    # Deterministic keys per id so two keyrings agree on a shared id.
    entries = [f"{i}:{base64.b64encode(i.encode().ljust(32, b'k')[:32]).decode()}" for i in ids]
    return Keyring.parse(",".join(entries))


async def test_secret_never_reaches_the_server_but_round_trips(temporal_client: Client) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    queue = f"codec-{uuid.uuid4().hex[:8]}"
    async with Worker(
        temporal_client, task_queue=queue, workflows=[SecretEchoWorkflow], activities=[echo_secret]
    ):
        handle = await temporal_client.start_workflow(
            SecretEchoWorkflow.run,
            Carrier(password=secret),
            id=f"codec-{uuid.uuid4()}",
            task_queue=queue,
        )
        result = await handle.result()
    assert result.password == secret

    # Read the history with a client that has no codec: what the server really holds.
    raw_client = await Client.connect(temporal_client.service_client.config.target_host)
    history = await raw_client.get_workflow_handle(handle.id).fetch_history()
    raw = history.to_json()
    serialized = b"".join(e.SerializeToString() for e in history.events)
    for needle in (secret, secret[::-1]):
        assert needle not in raw
        assert needle.encode() not in serialized
        assert base64.b64encode(needle.encode()).decode()[:20] not in raw
    assert "binary/encrypted" in raw or base64.b64encode(b"binary/encrypted").decode() in raw


async def test_old_key_still_decodes_after_rotation() -> None:
    old = EncryptionCodec(keyring("k1"))
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"password":"hunter2"}')
    [sealed] = await old.encode([payload])
    assert sealed.metadata["encryption-key-id"] == b"k1"
    assert b"hunter2" not in sealed.data

    rotated = EncryptionCodec(keyring("k1", "k2"))
    assert (await rotated.decode([sealed]))[0] == payload
    [resealed] = await rotated.encode([payload])
    assert resealed.metadata["encryption-key-id"] == b"k2"
    # Without the old key the old payload is unreadable, and says which key it needs.
    only_new = EncryptionCodec(keyring("k2"))
    try:
        await only_new.decode([sealed])
    except ValueError as error:
        assert "k1" in str(error)
    else:
        raise AssertionError("decoding without the key must fail")


async def test_tampered_payload_is_rejected() -> None:
    codec = EncryptionCodec(keyring("k1"))
    [sealed] = await codec.encode([Payload(data=b"x" * 10)])
    data = bytearray(sealed.data)
    data[-1] ^= 1
    sealed.data = bytes(data)
    try:
        await codec.decode([sealed])
    except CodecError as error:
        assert "corrupt or forged" in str(error)
    else:
        raise AssertionError("a modified ciphertext must not decode")


def test_keyring_errors_name_the_problem() -> None:
    for text, fragment in [
        ("", "no key"),
        ("nocolon", "id:base64key"),
        ("a:!!!", "not valid base64"),
        (f"a:{base64.b64encode(os.urandom(16)).decode()}", "16 bytes"),
    ]:
        try:
            Keyring.parse(text, setting="PREVIEW_CODEC_KEYS")
        except ValueError as error:
            assert fragment in str(error) and "PREVIEW_CODEC_KEYS" in str(error)
        else:
            raise AssertionError(f"{text!r} must be rejected")
