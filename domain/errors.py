"""Error types an activity raises when retrying cannot help: a person must act.

Workflows match them by name in their retry policies; activities/errors.py builds them.
"""

from __future__ import annotations

FOREIGN_RESOURCE = "ForeignResource"
INVALID_INPUT = "InvalidInput"
QUOTA_EXCEEDED = "QuotaExceeded"
UNKNOWN_REPOSITORY = "UnknownRepository"
ROLLOUT_FAILED = "RolloutFailed"
# Golden copies: a masking rule that did not hold, or a generation in the wrong state.
MASKING_NOT_VERIFIED = "MaskingNotVerified"
GOLDEN_STATE = "GoldenState"
PG_TOOL_FAILED = "PgToolFailed"

NON_RETRYABLE = [FOREIGN_RESOURCE, INVALID_INPUT, QUOTA_EXCEEDED, ROLLOUT_FAILED,
                 UNKNOWN_REPOSITORY]
