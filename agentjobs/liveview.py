"""What `agentjobs run` shows while its attempt runs in the foreground (issue 13).

The attempt's output as it streams, or with `--pretty` its transcript (transcript.py renders
an agent's JSON events as it does for `logs --pretty -f`). On a terminal, while the attempt
prints nothing for `QUIET` seconds, one line says how long it has run and how long it has been
quiet, redrawn in place (`\\r`) and wiped before the next output; never when the output is not
a terminal (a pipe, a file, a test), so what those get is the output alone.
"""

from __future__ import annotations

import sys
import threading
import time

QUIET = 3.0  # seconds without output before the elapsed-time line shows
REDRAW = 1.0  # seconds between redraws of it
_WIPE = "\r\x1b[K"  # back to the line's start, clear to its end


class LiveView:
    """`write` is the engine's `on_output` (called from the thread that waits on the
    attempt's supervisor); use as a context manager around the run."""

    def __init__(self, *, pretty: bool, tty: bool | None = None, color: bool | None = None) -> None:
        from agentjobs.transcript import Transcript

        self.tty = sys.stdout.isatty() if tty is None else tty
        color = self.tty if color is None else color
        self.transcript = Transcript(color) if pretty else None
        self._lock = threading.Lock()
        self._started = self._last = time.monotonic()
        self._line_start = True  # the output so far ends with a newline (or there is none)
        self._shown = False  # the elapsed-time line is on the screen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LiveView:
        self._started = self._last = time.monotonic()
        if self.tty:
            self._thread = threading.Thread(target=self._tick, name="elapsed", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._wipe()
            if self.transcript is not None:
                self._lines(self.transcript.finish())
            sys.stdout.flush()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._wipe()
            self._last = time.monotonic()
            if self.transcript is not None:
                self._lines(self.transcript.feed(data))
            elif data:
                sys.stdout.flush()
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                self._line_start = data.endswith(b"\n")

    def hush(self) -> None:
        """No elapsed-time line from now on (a question waits on the terminal, and a redraw
        would wipe it); the output still streams."""
        self._stop.set()
        with self._lock:
            self._wipe()

    def _lines(self, lines: list[str]) -> None:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def _wipe(self) -> None:
        if self._shown:
            sys.stdout.write(_WIPE)
            sys.stdout.flush()
            self._shown = False

    def _tick(self) -> None:
        from agentjobs.durations import format_duration

        while not self._stop.wait(REDRAW if self._shown else 0.2):
            with self._lock:
                now = time.monotonic()
                quiet = now - self._last
                if quiet < QUIET or not self._line_start:
                    continue  # never over a half-written line
                elapsed = format_duration(now - self._started)
                line = f"[agentjobs] running for {elapsed}, no output for {format_duration(quiet)}"
                sys.stdout.write(_WIPE + _dim(line))
                sys.stdout.flush()
                self._shown = True


def _dim(text: str) -> str:
    import click

    return click.style(text, dim=True)
