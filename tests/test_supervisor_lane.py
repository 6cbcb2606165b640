"""A worker's supervisors are reused (supervisor.Lane): the one that ran the worker's last
attempt takes the next, unless it is gone, settled its attempt itself, or was told to stop.
Real processes, real descriptors, real locks."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentjobs import locks
from agentjobs.supervisor import Channel, ForkServer, Lane, supervise
from tests.conftest import wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def _handler(request: dict[str, Any], keep: list[int], channel: Channel) -> dict[str, Any]:
    if request.get("settle_here"):  # the tick answers "n": the supervisor settles it itself
        channel.settled_by_tick({"records": [], "appended": True})
    held = [os.path.exists(f"/proc/self/fd/{fd}") for fd in keep]
    return {"pid": os.getpid(), "n": request["n"], "held": held}


@pytest.fixture
def lane() -> Iterator[Lane]:
    server = ForkServer(_handler)
    lane = Lane(server)
    yield lane
    lane.close()
    server.close()


def _run(
    lane: Lane, request: dict[str, Any], keep: tuple[int, ...] = (), *, settled: bool = True
) -> dict[str, Any]:
    return supervise(
        lane,
        request,
        keep_fds=keep,
        after_fork=lambda: None,
        settle=lambda _finished: settled,
        stop=threading.Event(),
        say=lambda _line: None,
        on_output=None,
    )


def test_one_supervisor_runs_a_workers_attempts_one_after_the_other(lane: Lane) -> None:
    first, second, third = (_run(lane, {"n": n}) for n in range(3))
    assert [first["n"], second["n"], third["n"]] == [0, 1, 2]
    assert first["pid"] == second["pid"] == third["pid"] != os.getpid()
    assert _alive(first["pid"])  # idle, waiting for the next attempt
    lane.close()  # the worker is done: its idle supervisor ends
    wait_for(lambda: not _alive(first["pid"]), timeout=5)


def test_an_attempts_lock_descriptors_are_closed_once_it_is_settled(
    lane: Lane, tmp_path: Path
) -> None:
    key = locks.try_key(tmp_path, "repo")
    assert key is not None
    result = _run(lane, {"n": 0}, (key.fd,))
    assert result["held"] == [True]  # the attempt ran holding the key
    key.release()  # this process's copy (the tick lets go of it as the attempt starts)
    again = locks.try_key(tmp_path, "repo")  # the idle supervisor holds nothing
    assert again is not None and _alive(result["pid"])
    again.release()


def test_a_killed_idle_supervisor_is_replaced_and_the_attempt_still_runs(lane: Lane) -> None:
    first = _run(lane, {"n": 0})
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(first["pid"]), timeout=5)
    second = _run(lane, {"n": 1})
    assert second["n"] == 1 and second["pid"] != first["pid"]


def test_a_supervisor_that_settled_its_attempt_itself_is_not_reused(lane: Lane) -> None:
    first = _run(lane, {"n": 0, "settle_here": True}, settled=False)
    wait_for(lambda: not _alive(first["pid"]), timeout=5)  # its tick may be gone: it ends
    second = _run(lane, {"n": 1})
    assert second["pid"] != first["pid"]
