"""The log lines of the long-running processes (`daemon`, `watch`): loguru, configured once.

`text`: human lines that start with the UTC time, coloured on a terminal
(`2026-12-01T03:00:05.123Z INFO    daemon: started for ...`). `json`: one object a line (`time`
in UTC, `level`, `source`, `message`, `pid`) for journald and log shippers. Both go to standard
error. UTC, because a daemon's log is read long after, from another machine or time zone.

Only those verbs import this module: loguru costs about 68 ms to import, and the minutely `tick`
and `status` never load it (STYLE.md rule 14; held by tests/test_daemon.py).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

    from loguru import Logger, Message

FORMATS = ("text", "json")
TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DDTHH:mm:ss.SSS!UTC}Z</green> <level>{level: <7}</level> "
    "{extra[source]}: {message}"
)

_configured: str | None = None


def configure(log_format: str = "text", stream: TextIO | None = None) -> Logger:
    """loguru's logger with this process's one sink (the first call's format wins: a daemon
    with `--watch` asks twice). Bind `source` for the part that speaks: `daemon`, `watch`."""
    from loguru import logger

    global _configured
    if _configured is None:
        if log_format not in FORMATS:
            raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
        target = stream if stream is not None else sys.stderr
        logger.remove()  # loguru's default sink: its format, and DEBUG lines
        logger.configure(extra={"source": "agentjobs"})
        if log_format == "json":
            logger.add(_json_lines(target), level="INFO", format="{message}")
        else:
            logger.add(target, level="INFO", format=TEXT_FORMAT, colorize=target.isatty())
        _configured = log_format
    return logger


def _json_lines(stream: TextIO) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        record = message.record
        line = {
            "time": record["time"].astimezone(UTC).isoformat(),
            "level": record["level"].name,
            "source": record["extra"].get("source", "agentjobs"),
            "message": record["message"],
            "pid": record["process"].id,
        }
        stream.write(json.dumps(line) + "\n")
        stream.flush()

    return write
