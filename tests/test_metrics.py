"""`agentjobs metrics` and `agentjobs stats` over state built by real ticks of real commands."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import write

FAKE = str(Path(__file__).with_name("fake_agent.py"))
J = "repo/jobs.d"
T0 = "2026-11-23T12:00:00Z"
RETRY = {"attempts": 2, "backoff": {"initial": "10m", "max": "1h", "jitter": "0s"}}


def job(*actions: str, **fields: Any) -> str:
    doc: dict[str, Any] = {"command": [sys.executable, FAKE, *actions]}
    doc.update(fields)
    return json.dumps(doc)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str):  # type: ignore[no-untyped-def]
    return parsed[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def history(aj, jobs_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """ok: succeeds every hour; bad: fails twice and is dead-lettered; all on 2026-11-23."""
    write(jobs_dir / "ok.yaml", job("print", "hi", schedule={"every": "1h"}))
    write(jobs_dir / "bad.yaml", job("exit", "1", schedule={"every": "1d"}, retry=RETRY))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 1  # ok succeeded, bad attempt 1 failed -> retry
    assert aj("tick", "--now", "2026-11-23T12:10:01Z").code == 1  # bad dead-lettered
    assert aj("tick", "--now", "2026-11-23T13:00:05Z").code == 0  # ok again


def test_metrics_count_attempts_by_outcome_and_the_histogram_matches_them(
    aj, history: None, state_dir: Path
) -> None:
    result = aj("metrics", "--now", "2026-11-23T14:00:00Z")
    assert result.code == 0, result.err
    parsed = samples(result.out)
    assert value(parsed, "agentjobs_attempts_total", job="ok", outcome="succeeded") == 2
    assert value(parsed, "agentjobs_attempts_total", job="bad", outcome="failed") == 2
    assert len([k for k in parsed if k[0] == "agentjobs_attempts_total"]) == 2
    for name, attempts in (("ok", 2), ("bad", 2)):
        count = value(parsed, "agentjobs_attempt_duration_seconds_count", job=name)
        assert count == attempts
        assert value(parsed, "agentjobs_attempt_duration_seconds_bucket", job=name, le="+Inf") == (
            attempts
        )
        # quick commands: every one fits the first bucket, and the buckets are cumulative
        assert value(parsed, "agentjobs_attempt_duration_seconds_bucket", job=name, le="1.0") == 2
        assert 0 < value(parsed, "agentjobs_attempt_duration_seconds_sum", job=name) < 2
    assert value(parsed, "agentjobs_dead_letters_open") == 1
    assert value(parsed, "agentjobs_running") == 0
    assert value(parsed, "agentjobs_queued", priority="normal") == 0
    assert value(parsed, "agentjobs_oldest_queued_seconds") == 0
    assert value(parsed, "agentjobs_notification_failures_total") == 0
    last = value(parsed, "agentjobs_last_success_timestamp_seconds", job="ok")
    assert 1795438805 <= last < 1795438805 + 5  # 2026-11-23T13:00:05Z and a few seconds
    assert ("agentjobs_last_success_timestamp_seconds", (("job", "bad"),)) not in parsed
    # the notifier's counter file, and a resolved dead letter is no longer open
    (state_dir / "notify-failures.json").write_text('{"total": 3}')
    dlq_id = json.loads(aj("-o", "json", "dlq", "list").out)[0]["id"]
    assert aj("dlq", "resolve", dlq_id, "--note", "fixed").code == 0
    parsed = samples(aj("metrics", "--now", "2026-11-23T14:00:00Z").out)
    assert value(parsed, "agentjobs_notification_failures_total") == 3
    # the counter the notifier keeps in the store (store.count) is read too
    (state_dir / "counters.json").write_text('{"notify_failures": 5}')
    parsed = samples(aj("metrics", "--now", "2026-11-23T14:00:00Z").out)
    assert value(parsed, "agentjobs_notification_failures_total") == 5
    assert value(parsed, "agentjobs_dead_letters_open") == 0


def test_metrics_show_the_queue_by_priority_and_the_oldest_age(
    aj, jobs_dir: Path, state_dir: Path
) -> None:
    write(jobs_dir / "bad.yaml", job("exit", "1", schedule={"every": "1d"}, retry=RETRY))
    assert aj("apply", "--now", T0).code == 0
    assert aj("tick", "--now", T0).code == 1  # the retry waits in the queue
    parsed = samples(aj("metrics", "--now", "2026-11-23T12:05:00Z").out)
    assert value(parsed, "agentjobs_queued", priority="normal") == 1
    assert value(parsed, "agentjobs_queued", priority="high") == 0
    assert 295 <= value(parsed, "agentjobs_oldest_queued_seconds") <= 300


def test_closed_days_come_from_the_cache_and_a_changed_day_file_is_counted_again(
    aj, history: None, state_dir: Path
) -> None:
    now = "2026-11-24T09:00:00Z"
    assert aj("tick", "--now", "2026-11-24T08:00:00Z").code == 0  # ok runs on the next day
    first = aj("metrics", "--now", now).out
    cache = json.loads((state_dir / "metrics-cache.json").read_text())
    assert list(cache["days"]) == ["2026-11-23"]  # today is read every time, never cached
    assert value(samples(first), "agentjobs_attempts_total", job="ok", outcome="succeeded") == 3
    assert aj("metrics", "--now", now).out == first
    # the closed day is not read again while its file is unchanged: the cached count is used
    cache["days"]["2026-11-23"]["attempts"]["ok"]["succeeded"] = 40
    (state_dir / "metrics-cache.json").write_text(json.dumps(cache))
    cached = samples(aj("metrics", "--now", now).out)
    assert value(cached, "agentjobs_attempts_total", job="ok", outcome="succeeded") == 41
    # a changed day file (a late append, retention) is counted again from its records
    day = state_dir / "records" / "2026-11-23.jsonl"
    day.write_text(day.read_text() + "\n")
    recounted = samples(aj("metrics", "--now", now).out)
    assert value(recounted, "agentjobs_attempts_total", job="ok", outcome="succeeded") == 3
    # a damaged cache is rebuilt, not an error
    (state_dir / "metrics-cache.json").write_text("{not json")
    assert aj("metrics", "--now", now).out == first


def test_label_values_are_escaped(aj, history: None, state_dir: Path) -> None:
    weird = 'we"ird\\job\nname'
    record = {
        "event": "attempt_finished",
        "time": "2026-11-23T15:00:00+00:00",
        "job": weird,
        "outcome": "succeeded",
        "duration_s": 2.5,
        "finished_at": "2026-11-23T15:00:00+00:00",
    }
    with open(state_dir / "records" / "2026-11-23.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    result = aj("metrics", "--now", "2026-11-23T16:00:00Z")
    assert '{job="we\\"ird\\\\job\\nname",outcome="succeeded"}' in result.out
    parsed = samples(result.out)
    assert value(parsed, "agentjobs_attempts_total", job=weird, outcome="succeeded") == 1
    assert value(parsed, "agentjobs_attempt_duration_seconds_bucket", job=weird, le="1.0") == 0
    assert value(parsed, "agentjobs_attempt_duration_seconds_bucket", job=weird, le="5.0") == 1


def test_textfile_is_written_atomically_with_the_same_text(
    aj, history: None, tmp_path: Path
) -> None:
    now = "2026-11-23T14:00:00Z"
    target = tmp_path / "collector" / "agentjobs.prom"
    target.parent.mkdir()
    old_umask = os.umask(0o077)  # a cron job's umask: the file is still readable by others
    try:
        result = aj("metrics", "--textfile", str(target), "--now", now)
    finally:
        os.umask(old_umask)
    assert (result.code, result.out) == (0, "")
    assert target.read_text() == aj("metrics", "--now", now).out
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert [p.name for p in target.parent.iterdir()] == ["agentjobs.prom"]  # no temp file left
    missing = aj("metrics", "--textfile", str(tmp_path / "nope" / "x.prom"), "--now", now)
    assert missing.code == 2 and "cannot write" in missing.err


def test_metrics_without_state_are_zeros_and_create_nothing(cli, state_dir: Path) -> None:
    result = cli("--state-dir", str(state_dir), "metrics")
    assert result.code == 0
    parsed = samples(result.out)
    assert value(parsed, "agentjobs_dead_letters_open") == 0
    assert value(parsed, "agentjobs_queued", priority="low") == 0
    assert not state_dir.exists()


def test_stats_json_counts_today_and_the_week(aj, history: None, jobs_dir: Path) -> None:
    assert aj("tick", "--now", "2026-11-24T08:00:00Z").code == 0  # ok, the next day
    assert aj("pause", "bad").code == 0
    result = aj("-o", "json", "stats", "--now", "2026-11-24T09:00:00Z")
    assert result.code == 0, result.err
    review = json.loads(result.out)
    assert review["today"] == {
        "processed": 1,
        "runs": 1,
        "succeeded": 1,
        "failed": 0,
        "dead_lettered": 0,
        "failure_rate": 0.0,
    }
    assert review["last_7_days"] == {
        "processed": 5,
        "runs": 4,
        "succeeded": 3,
        "failed": 2,
        "dead_lettered": 1,
        "failure_rate": 0.4,
    }
    by_job = {j["job"]: j for j in review["jobs"]}
    assert (by_job["ok"]["attempts"], by_job["ok"]["failed"]) == (3, 0)
    assert (by_job["bad"]["attempts"], by_job["bad"]["failed"]) == (2, 2)
    assert 0 < by_job["ok"]["avg_duration_s"] <= by_job["ok"]["p95_duration_s"] < 2
    assert by_job["ok"]["p95_duration_s"] <= by_job["ok"]["max_duration_s"]
    assert {j["job"] for j in review["slowest"]} == {"ok", "bad"}
    assert [e["job"] for e in review["dead_letters_open"]] == ["bad"]
    assert review["held_jobs"] == [{"job": "bad", "reason": "paused", "until": None}]
    # eight days later the week is empty
    later = json.loads(aj("-o", "json", "stats", "--now", "2026-12-02T09:00:00Z").out)
    assert later["last_7_days"]["processed"] == 0 and later["jobs"] == []
    text = aj("stats", "--now", "2026-11-24T09:00:00Z").out
    assert "today:       1 processed, 0 failed (0%), 0 dead-lettered" in text
    assert "last 7 days: 5 processed, 2 failed (40%), 1 dead-lettered" in text
    assert "open dead letters: 1" in text
    assert "  bad: paused" in text
