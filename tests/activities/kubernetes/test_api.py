"""The request layer's pure helpers (no cluster needed)."""

from __future__ import annotations

import base64
import itertools

from temporalio.exceptions import ApplicationError

from activities.errors import INVALID_INPUT
from activities.kubernetes.api import poll_delays, redact


def test_redaction_masks_values_and_their_base64() -> None:
    value = "s3cr3t-value"
    encoded = base64.b64encode(value.encode()).decode()
    error = ApplicationError(f"bad {value} and {encoded}", type=INVALID_INPUT,
                             non_retryable=True)
    redacted = redact(error, [value])
    assert redacted.message == "bad *** and ***"
    assert redacted.type == INVALID_INPUT and redacted.non_retryable


def test_polls_start_fast_and_settle_at_the_interval() -> None:
    assert list(itertools.islice(poll_delays(2.0), 8)) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert list(itertools.islice(poll_delays(0.05), 3)) == [0.05, 0.05, 0.05]
