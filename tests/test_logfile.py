"""logfile.py: the capped attempt log (head + marker + tail, constant memory) and the chunked
readers `agentjobs logs` uses."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from agentjobs.logfile import CappedLog, copy_to, marker, tail_start


@pytest.mark.parametrize("cap", [4096, 10_000, 3 * 65536 + 7])
def test_any_stream_ends_as_its_head_a_marker_and_its_tail(tmp_path: Path, cap: int) -> None:
    rng = random.Random(cap)
    for trial in range(20):
        path = tmp_path / f"{trial}.log"
        before = b"[agentjobs] an earlier step\n" if trial % 2 else b""
        path.write_bytes(before)
        stream = bytearray()
        with open(path, "ab", buffering=0) as log:
            capped = CappedLog(log, path, cap)
            wanted = rng.randint(0, cap * 5)
            while len(stream) < wanted:
                chunk = rng.randbytes(rng.randint(1, min(70_000, cap)))
                stream += chunk
                capped.write(chunk)
                # while it runs the file never holds more than 1.5x the cap (and a marker)
                assert path.stat().st_size <= len(before) + cap + cap // 2 + 200
            capped.finish()
        data = path.read_bytes()
        assert data.startswith(before)
        data = data[len(before) :]
        head, tail = cap // 2, cap - cap // 2
        if len(stream) <= cap:
            assert data == stream
        else:
            assert data == stream[:head] + marker(len(stream) - cap, cap) + stream[-tail:]


def test_no_cap_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with open(path, "ab", buffering=0) as log:
        capped = CappedLog(log, path, None)
        for _ in range(10):
            capped.write(b"x" * 100_000)
        capped.finish()
    assert path.stat().st_size == 1_000_000


def test_tail_start_finds_the_last_lines_reading_backwards(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"a\nb\nc\n")
    assert path.read_bytes()[tail_start(path, 2) :] == b"b\nc\n"
    assert path.read_bytes()[tail_start(path, 9) :] == b"a\nb\nc\n"
    path.write_bytes(b"a\nb\nc")  # no final newline
    assert path.read_bytes()[tail_start(path, 2) :] == b"b\nc"
    lines = [f"{n}\n".encode() for n in range(100_000)]  # over many 64 KiB chunks
    path.write_bytes(b"".join(lines))
    assert path.read_bytes()[tail_start(path, 30_000) :] == b"".join(lines[-30_000:])
    path.write_bytes(b"")
    assert tail_start(path, 3) == 0


def test_copy_to_streams_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    data = os.urandom(300_000)
    path.write_bytes(data)
    pieces: list[bytes] = []
    assert copy_to(path, pieces.append, 1000) == 300_000
    assert b"".join(pieces) == data[1000:] and max(len(p) for p in pieces) <= 65536
