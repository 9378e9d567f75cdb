"""Times as cas writes them: UTC, ISO 8601, to the second (``2026-11-24T10:00:00+00:00``).

Manifests, checkout records, the store config and every ``--json`` time use this one form.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(ts: float | None = None) -> str:
    """``ts`` (seconds since the epoch; default: now) as UTC ISO 8601 to the second."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(
        timespec="seconds")
