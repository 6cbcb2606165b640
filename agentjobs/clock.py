"""Time as the engine sees it: an injectable clock and the one stored time format.

Stored times are UTC ISO-8601 with seconds and `+00:00` (DESIGN.md invariant 6), always written by
`iso()`, so they compare correctly as plain strings: the no-op tick compares strings and parses
nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


def iso(moment: datetime | None) -> str | None:
    """The one format stored times have."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Clock:
    """Real time, or time that starts at `start` (tests, `--now` replays) and runs on from there
    at the real rate, so durations of real processes stay real; or `rate` times faster (tests
    that watch a daemon through minutes of schedule in seconds)."""

    start: datetime | None = None
    _origin: float = field(default_factory=time.monotonic)
    rate: float = 1.0

    def now(self) -> datetime:
        if self.start is None:
            return datetime.now(UTC)
        return self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.rate)

    def real_seconds(self, seconds: float) -> float:
        """How long `seconds` of this clock's time take (to sleep until a stored time)."""
        return seconds / self.rate if self.start is not None else seconds
