"""A secret value as it travels and rests: sealed, never in clear."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SealedValue(BaseModel):
    """AES-256-GCM ciphertext of one value plus its data key wrapped by a master key."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    wrapped_key: str
    nonce: str
    ciphertext: str

    def __repr__(self) -> str:
        return f"SealedValue(key_id={self.key_id!r})"

    __str__ = __repr__
