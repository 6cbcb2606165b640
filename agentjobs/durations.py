"""Durations as users write them: `90s`, `10m`, `2h`, `1d`, `1h30m`, `500ms`, or ISO-8601 `PT2H`."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SHORT_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_ISO = re.compile(
    r"^P(?!$)(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)

# The same grammar as a JSON Schema pattern (kept in schema/job.schema.json as `duration`).
PATTERN = (
    r"^((\d+(\.\d+)?(ms|s|m|h|d|w))+|P(?!$)(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
    r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?)$"
)


MAX_SECONDS = 10 * 365 * 86400.0  # nothing agentjobs times is longer than ten years


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with a message that shows the accepted forms."""
    value = text.strip()
    seconds = None
    if _SHORT_WHOLE.match(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _SHORT.findall(value))
    elif iso := _ISO.match(value):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        seconds = sum(parts.get(k, 0.0) * _UNITS[k] for k in ("w", "d", "h", "m", "s"))
    if seconds is not None:
        if not seconds <= MAX_SECONDS:  # also catches inf and nan
            raise ValueError(f"`{text}` is longer than the 10-year limit on durations")
        return seconds
    raise ValueError(
        f"`{text}` is not a duration; write e.g. 90s, 10m, 2h, 1d, 1h30m or ISO-8601 PT2H"
    )


def format_duration(seconds: float) -> str:
    """Short human form: `2h`, `1h30m`, `45s`, `1d2h` (largest units first, zero parts dropped)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    remaining = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            count, remaining = divmod(remaining, size)
            out.append(f"{count}{unit}")
    return "".join(out[:2])
