"""Sizes as users write them: `64MiB`, `500k`, `2G`, `1.5MB`, `4096` (bytes).

`k`, `K`, `KiB` (and `M`, `G`, `T` alike) are powers of 1024, as systemd reads sizes; `KB`, `MB`,
`GB`, `TB` are powers of 1000; a bare number (or `B`) is bytes.
"""

from __future__ import annotations

import re

# The same grammar as a JSON Schema pattern (kept in schema/job.schema.json as `max_log_size`).
PATTERN = r"^[0-9]+(\.[0-9]+)?\s?([kKmMgGtT]([iI]?[bB])?|[bB])?$"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s?(?:([kmgt])(i?b)?|(b))?$", re.IGNORECASE)
_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str | int) -> int:
    """Bytes in `text`; raises ValueError with a message that shows the accepted forms."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"`{text}` is not a size; write e.g. 64MiB, 500k, 2G or 1048576")
    number, unit, suffix, _ = match.groups()
    base = 1000 if suffix is not None and suffix.lower() == "b" else 1024
    return int(float(number) * base ** _POWER[unit.lower()]) if unit else int(float(number))


def format_size(size: int) -> str:
    """Short human form with binary units: `64MiB`, `1.5GiB`, `512B`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.3g}{unit}" if unit != "B" else f"{size}B"
        value /= 1024
    return f"{value:.3g}TiB"
