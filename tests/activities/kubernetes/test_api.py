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
    delays = list(itertools.islice(poll_delays(2.0), 40))
    assert delays[:3] == [0.1, 0.2, 0.25]
    # Brisk for the first 8 seconds, then doubling up to the interval.
    brisk = list(itertools.takewhile(lambda d: d <= 0.25, delays))
    assert 8.0 <= sum(brisk) < 8.25
    assert delays[len(brisk):len(brisk) + 4] == [0.5, 1.0, 2.0, 2.0]
    assert list(itertools.islice(poll_delays(0.05), 3)) == [0.05, 0.05, 0.05]
    assert list(itertools.islice(poll_delays(1.0, first=0.02, brisk_for=0), 4)) == [
        0.02, 0.04, 0.08, 0.16]
