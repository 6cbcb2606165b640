"""Specs built from job files and the global config: defaults, the stored form, the two hashes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agentjobs.spec import (
    DEFAULT_LEASE,
    GlobalConfig,
    JobSpec,
    build_config,
    job_from_dict,
)
from agentjobs.validate import load_jobs_dir
from tests.conftest import write


def _job(jobs_dir: Path, text: str) -> JobSpec:
    write(jobs_dir / "a.yaml", text)
    result = load_jobs_dir(jobs_dir)
    assert result.ok, result.problems
    return result.jobs[0].spec


def test_runs_on_is_a_sorted_tuple_and_empty_means_any_host(jobs_dir: Path) -> None:
    assert _job(jobs_dir, "command: [a]\n").runs_on == ()
    spec = _job(jobs_dir, "command: [a]\nruns_on: [linux, big, gpu.a100]\n")
    assert spec.runs_on == ("big", "gpu.a100", "linux")


def test_runs_on_round_trips_through_the_stored_form(jobs_dir: Path) -> None:
    spec = _job(jobs_dir, "command: [a]\nruns_on: [linux, big]\n")
    data = spec.to_dict()
    assert data["runs_on"] == ["big", "linux"]
    assert job_from_dict(data) == spec
    assert job_from_dict(data).spec_hash() == spec.spec_hash()


def test_a_stored_spec_from_before_runs_on_reads_back_as_any_host(jobs_dir: Path) -> None:
    data = _job(jobs_dir, "command: [a]\n").to_dict()
    del data["runs_on"]
    assert job_from_dict(data).runs_on == ()


def test_runs_on_changes_the_spec_hash_but_not_the_schedule_hash(jobs_dir: Path) -> None:
    base = "command: [a]\nschedule: {cron: '0 2 * * *'}\n"
    anywhere = _job(jobs_dir, base)
    linux = _job(jobs_dir, base + "runs_on: [linux]\n")
    big_linux = _job(jobs_dir, base + "runs_on: [linux, big]\n")
    assert len({anywhere.spec_hash(), linux.spec_hash(), big_linux.spec_hash()}) == 3
    assert anywhere.schedule_hash() == linux.schedule_hash() == big_linux.schedule_hash()
    # the order labels are written in means nothing
    assert _job(jobs_dir, base + "runs_on: [big, linux]\n").spec_hash() == big_linux.spec_hash()


def test_runs_on_is_not_a_global_default(jobs_dir: Path) -> None:
    # a job could not opt back out of it (`runs_on: []` is refused), so the config has no such key
    write(jobs_dir / "agentjobs.yaml", "runs_on: [linux]\n")
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = load_jobs_dir(jobs_dir)
    assert [p.json_path for p in result.errors] == ["runs_on"]


def test_config_without_the_multi_host_keys_has_defaults() -> None:
    config = build_config(None)
    assert (config.max_concurrent_per_host, config.lease) == (None, DEFAULT_LEASE)
    assert config.lease == 30.0
    stored = config.to_dict()
    assert stored["lease"] == 30.0
    assert "max_concurrent_per_host" not in stored
    assert GlobalConfig().to_dict() == stored


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("2m", 120.0), ("1s", 1.0), ("PT1M30S", 90.0)]
)
def test_config_lease_is_a_duration_stored_in_seconds(text: str, seconds: float) -> None:
    config = build_config({"lease": text})
    assert config.lease == seconds
    assert config.to_dict()["lease"] == seconds
    assert isinstance(config.to_dict()["lease"], float)


def test_config_max_concurrent_per_host_is_stored_only_when_set() -> None:
    config = build_config({"max_concurrent": 8, "max_concurrent_per_host": 3})
    assert (config.max_concurrent, config.max_concurrent_per_host) == (8, 3)
    stored = config.to_dict()
    assert (stored["max_concurrent"], stored["max_concurrent_per_host"]) == (8, 3)
    assert dataclasses.replace(config, max_concurrent_per_host=None).to_dict() == {
        k: v for k, v in stored.items() if k != "max_concurrent_per_host"
    }


def test_config_multi_host_keys_load_from_agentjobs_yaml(jobs_dir: Path) -> None:
    write(jobs_dir / "agentjobs.yaml", "max_concurrent_per_host: 1\nlease: 2m\n")
    write(jobs_dir / "a.yaml", "command: [a]\n")
    result = load_jobs_dir(jobs_dir)
    assert result.ok, result.problems
    assert (result.config.max_concurrent_per_host, result.config.lease) == (1, 120.0)
