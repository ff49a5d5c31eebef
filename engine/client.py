"""The one place a Temporal client is built: pydantic converter plus the payload codec."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from engine.codec import EncryptionCodec
from engine.keyring import Keyring
from engine.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    keyring = Keyring.parse(settings.codec_keys.get_secret_value(), setting="PREVIEW_CODEC_KEYS")
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(keyring))


async def connect(settings: Settings) -> Client:
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=settings.temporal_tls,
        api_key=api_key,
    )
