"""Job files become immutable `JobSpec` values with every default applied and every path resolved.

`build_job` expects a document that already passed the schema and the semantic checks in
`validate.py`; it only converts. `JobSpec.to_dict` / `job_from_dict` are the stored form (state),
and `spec_hash` is the hash `plan` compares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agentjobs.durations import parse_duration
from agentjobs.logfile import DEFAULT_MAX_LOG_SIZE
from agentjobs.sizes import parse_size

CONFIG_FILE_NAME = "agentjobs.yaml"
DEFAULT_TIMEOUT = 3600.0
DEFAULT_AGENT_SILENCE = 900.0
DEFAULT_KILL_GRACE = 10.0
MIN_MAX_LOG_SIZE = 4096
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_LEASE = 30.0
MIN_LEASE = 1.0
# A host label in `runs_on` (the same pattern is in schema/job.schema.json)
HOST_LABEL_PATTERN = r"^[A-Za-z0-9_.-]+$"
PRIORITIES = ("high", "normal", "low")
DEFAULT_NOTIFY_EVENTS = (
    "failed",
    "dead_lettered",
    "silence",
    "timeout",
    "budget_exceeded",
    "awaiting_review",
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a job runs: exactly one of `cron`, `every` (seconds) or `at` (UTC ISO-8601)."""

    cron: str | None = None
    every: float | None = None
    at: str | None = None
    timezone: str = "UTC"
    catchup: str = "once"
    jitter: float = 0.0

    def describe(self) -> str:
        from agentjobs.durations import format_duration

        if self.cron is not None:
            return self.cron if self.timezone == "UTC" else f"{self.cron} ({self.timezone})"
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"at {self.at}"


@dataclass(frozen=True, slots=True)
class OutcomeMatch:
    """One `retry_on`/`never_on` entry: an outcome class, an exit code, or an output regex."""

    outcome: str | None = None
    exit_code: int | None = None
    output: str | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 60.0
    max: float = 1800.0
    multiplier: float = 2.0
    jitter: float = 6.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 1
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[OutcomeMatch, ...] = ()
    never_on: tuple[OutcomeMatch, ...] = ()
    corrective: bool = False
    resume: bool = False
    corrective_template: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    kind: str
    prompt: str | None = None
    prompt_file: str | None = None
    model: str | None = None
    max_turns: int | None = None
    permission_mode: str | None = None
    allowed_tools: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    append_system_prompt: str | None = None
    max_budget_usd: float | None = None
    sandbox: str | None = None
    approval_mode: str | None = None
    allow_commits: bool = False
    command: tuple[str, ...] = ()  # kind custom
    output: str = "text"  # kind custom: text | stream-json
    limit_key: str | None = None  # shared usage limit; default the kind
    rate_limit_patterns: tuple[str, ...] = ()
    # agents that run instead while this one's limit key is held by a usage limit (same prompt)
    fallback: tuple[AgentSpec, ...] = ()

    @property
    def key(self) -> str:
        """The usage limit it shares (an account): `limit_key`, default the kind."""
        return self.limit_key or self.kind


@dataclass(frozen=True, slots=True)
class Budget:
    """Hard caps in USD on a job's (or an account's) agent spending."""

    per_run: float | None = None
    per_day: float | None = None


@dataclass(frozen=True, slots=True)
class Rate:
    """Pacing: at most `max` attempts start in any sliding window of `per` seconds."""

    max: int
    per: float


@dataclass(frozen=True, slots=True)
class VerifySpec:
    argv: tuple[str, ...] = ()
    shell: str | None = None
    timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class LandSpec:
    """`land:`: what happens to a successful run's branch (landing.py, review.py)."""

    mode: str = "branch"  # branch | merge | review
    into: str | None = None  # None: the workdir's current branch when the run starts
    strategy: str = "merge"  # merge | rebase | squash


@dataclass(frozen=True, slots=True)
class NotifySpec:
    events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS
    webhook: str | None = None
    command: tuple[str, ...] = ()
    ping_url: str | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as it runs: defaults applied, paths absolute, durations in seconds."""

    name: str
    workdir: str
    lock: str
    command: tuple[str, ...] = ()
    shell: str | None = None
    agent: AgentSpec | None = None
    description: str = ""
    enabled: bool = True
    labels: tuple[tuple[str, str], ...] = ()
    priority: str = "normal"
    schedule: Schedule | None = None
    env: tuple[tuple[str, str], ...] = ()
    env_file: str | None = None
    secrets: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    silence_timeout: float | None = None
    kill_grace: float = DEFAULT_KILL_GRACE
    max_log_size: int = DEFAULT_MAX_LOG_SIZE  # bytes
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    overlap: str = "skip"
    needs: tuple[str, ...] = ()
    verify: VerifySpec | None = None
    notify: NotifySpec | None = None
    isolation: str = "none"  # none | worktree
    land: LandSpec | None = None  # None: `branch` (the run's branch is kept, nothing lands)
    expect_changes: bool = False  # a success that changed nothing is `no_change`
    runs_on: tuple[str, ...] = ()  # host labels a host must all have; empty: any host
    budget: Budget | None = None
    rate: Rate | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)  # type: ignore[no-any-return]

    def spec_hash(self) -> str:
        # the repr of these frozen dataclasses is deterministic and ~10x cheaper than JSON
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def schedule_hash(self) -> str:
        """Changes exactly when the next-run computation must start over (not on prompt edits,
        nor on `runs_on`: moving a job to other hosts keeps its slots): the schedule, or
        `enabled` (a re-enabled job starts from now, not from when it paused)."""
        return hashlib.sha256(repr((self.schedule, self.enabled)).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Retention:
    records: float | None = None
    logs: float | None = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """`agentjobs.yaml`: installation settings plus defaults merged under every job."""

    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    retention: Retention = field(default_factory=Retention)
    defaults: tuple[tuple[str, Any], ...] = ()  # job-level keys, as written
    alerts: tuple[tuple[str, Any], ...] = ()  # thresholds; durations in seconds
    max_concurrent_per_host: int | None = None  # None: only `max_concurrent` limits a host
    lease: float = DEFAULT_LEASE  # seconds a host's hold on a running attempt lasts unrenewed
    # model -> {input, output, cached} USD per million tokens, over pricing.DEFAULT_PRICES
    pricing: tuple[tuple[str, Any], ...] = ()
    budget: Budget | None = None  # all agents together (`budgets.per_day`)
    accounts: tuple[tuple[str, Budget], ...] = ()  # limit key -> its caps (`budgets.accounts`)
    rates: tuple[tuple[str, Rate], ...] = ()  # limit key -> pacing
    timezone: str = "UTC"  # where a budget's day starts

    def to_dict(self) -> dict[str, Any]:
        limits = {
            "pricing": dict(self.pricing),
            "budget": _plain(self.budget),
            "accounts": {key: _plain(b) for key, b in self.accounts},
            "rates": {key: _plain(r) for key, r in self.rates},
        }
        return {
            **{key: value for key, value in limits.items() if value},
            **({"timezone": self.timezone} if self.timezone != "UTC" else {}),
            "max_concurrent": self.max_concurrent,
            **(
                {"max_concurrent_per_host": self.max_concurrent_per_host}
                if self.max_concurrent_per_host is not None
                else {}
            ),
            "lease": self.lease,
            "retention": _plain(self.retention),
            "defaults": dict(self.defaults),
            **({"alerts": dict(self.alerts)} if self.alerts else {}),
        }


def content_hash(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively (the stored JSON form)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(type(value), "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    return value


# -- building from a validated document --------------------------------------------------------

_JOB_DEFAULT_KEYS = (
    "priority",
    "timeout",
    "silence_timeout",
    "kill_grace",
    "max_log_size",
    "overlap",
    "retry",
    "notify",
    "env",
    "secrets",
)


def build_config(raw: dict[str, Any] | None) -> GlobalConfig:
    raw = raw or {}
    retention_raw = raw.get("retention", {})
    retention = Retention(
        records=_dur(retention_raw.get("records")),
        logs=_dur(retention_raw.get("logs"), 30 * 86400.0),
    )
    defaults = {
        k: raw[k]
        for k in (*_JOB_DEFAULT_KEYS, "timezone", "catchup", "rate_limit_patterns")
        if k in raw
    }
    alerts = dict(raw.get("alerts", {}))
    if "oldest_queued" in alerts:
        alerts["oldest_queued"] = parse_duration(alerts["oldest_queued"])
    if "failure_rate" in alerts:
        rate = dict(alerts["failure_rate"])
        rate["window"] = parse_duration(rate.get("window", "24h"))
        alerts["failure_rate"] = rate
    per_host = raw.get("max_concurrent_per_host")
    budgets = raw.get("budgets", {})
    return GlobalConfig(
        pricing=tuple(sorted(raw.get("pricing", {}).items())),
        budget=_budget({"per_day": budgets["per_day"]}) if "per_day" in budgets else None,
        accounts=tuple(
            (key, Budget(per_day=float(b["per_day"])))
            for key, b in sorted(budgets.get("accounts", {}).items())
        ),
        rates=tuple((key, _rate(r)) for key, r in sorted(raw.get("rates", {}).items())),
        timezone=raw.get("timezone", "UTC"),
        max_concurrent=int(raw.get("max_concurrent", DEFAULT_MAX_CONCURRENT)),
        retention=retention,
        defaults=tuple(sorted(defaults.items())),
        alerts=tuple(sorted(alerts.items())),
        max_concurrent_per_host=None if per_host is None else int(per_host),
        lease=_dur(raw.get("lease"), DEFAULT_LEASE) or DEFAULT_LEASE,
    )


def merge_defaults(raw: dict[str, Any], config: GlobalConfig) -> dict[str, Any]:
    """The job document with the global defaults underneath it (the job wins, key by key)."""
    defaults = dict(config.defaults)
    merged = dict(raw)
    for key in _JOB_DEFAULT_KEYS:
        if key not in defaults:
            continue
        if key not in merged:
            merged[key] = defaults[key]
        elif key in ("retry", "notify", "env") and isinstance(merged[key], dict):
            base = dict(defaults[key])
            if key == "retry" and "backoff" in base and "backoff" in merged[key]:
                base["backoff"] = {**base["backoff"], **merged[key]["backoff"]}
                merged[key] = {**base, **{k: v for k, v in merged[key].items() if k != "backoff"}}
            else:
                merged[key] = {**base, **merged[key]}
        elif key == "secrets":
            merged[key] = sorted(set(defaults[key]) | set(merged[key]))
    if "schedule" in merged:
        schedule = dict(merged["schedule"])
        for key in ("timezone", "catchup"):
            if key not in schedule and key in defaults:
                schedule[key] = defaults[key]
        merged["schedule"] = schedule
    return merged


@lru_cache(maxsize=4096)
def expand_path(text: str, base: Path) -> str:
    """`~` and `$VARS` expanded; relative paths are taken from `base`; symlinks resolved.
    (Cached: thousands of jobs name the same few directories.)"""
    expanded = os.path.expanduser(os.path.expandvars(text))
    return os.path.realpath(os.path.join(base, expanded))


def source_dir(folder: Path) -> Path:
    """The resolved directory of a job file, computed once per directory."""
    return _realpath_dir(os.path.abspath(folder))  # the cache key must not depend on the cwd


@lru_cache(maxsize=256)
def _realpath_dir(folder: str) -> Path:
    return Path(os.path.realpath(folder))


def default_workdir(source: Path) -> str:
    """A job without `workdir` runs in the directory that holds the jobs directory (the repo)."""
    return str(source_dir(source.parent).parent)


def parse_at(text: str, tz: str) -> datetime:
    """A one-off time; naive times are read in `tz`. Raises ValueError."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz))
    return moment.astimezone(UTC)


def _dur(value: str | None, default: float | None = None) -> float | None:
    return default if value is None else parse_duration(value)


def _matches(items: list[Any] | None) -> tuple[OutcomeMatch, ...]:
    out = []
    for item in items or []:
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            out.append(OutcomeMatch(exit_code=item))
        elif isinstance(item, str):
            out.append(OutcomeMatch(outcome=item))
        else:
            out.append(OutcomeMatch(output=item["output"]))
    return tuple(out)


def build_job(raw: dict[str, Any], source: Path, config: GlobalConfig) -> JobSpec:
    """Convert one validated job document (global defaults merged in here)."""
    doc = merge_defaults(raw, config)
    base = source_dir(source.parent)
    name = doc.get("name") or source.stem
    workdir = expand_path(doc["workdir"], base) if "workdir" in doc else default_workdir(source)
    lock = doc.get("lock") or workdir

    schedule = None
    if "schedule" in doc:
        raw_schedule = doc["schedule"]
        tz = raw_schedule.get("timezone", "UTC")
        at = raw_schedule.get("at")
        schedule = Schedule(
            cron=raw_schedule.get("cron"),
            every=_dur(raw_schedule.get("every")),
            at=parse_at(at, tz).isoformat() if at else None,
            timezone=tz,
            catchup=raw_schedule.get("catchup", "once"),
            jitter=_dur(raw_schedule.get("jitter"), 0.0) or 0.0,
        )

    agent = _agent(doc["agent"], base, config) if "agent" in doc else None

    command: tuple[str, ...] = ()
    shell = None
    if "command" in doc:
        if isinstance(doc["command"], str):
            shell = doc["command"]
        else:
            command = tuple(doc["command"])

    silence = _dur(doc.get("silence_timeout"), DEFAULT_AGENT_SILENCE if agent else None)
    return JobSpec(
        name=name,
        description=doc.get("description", ""),
        enabled=doc.get("enabled", True),
        labels=tuple(sorted(doc.get("labels", {}).items())),
        workdir=workdir,
        lock=lock,
        priority=doc.get("priority", "normal"),
        schedule=schedule,
        command=command,
        shell=shell,
        agent=agent,
        env=tuple(sorted(doc.get("env", {}).items())),
        env_file=expand_path(doc["env_file"], base) if "env_file" in doc else None,
        secrets=tuple(sorted(doc.get("secrets", ()))),
        timeout=_dur(doc.get("timeout"), DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT,
        silence_timeout=silence,
        kill_grace=_dur(doc.get("kill_grace"), DEFAULT_KILL_GRACE) or 0.0,
        max_log_size=parse_size(doc.get("max_log_size", DEFAULT_MAX_LOG_SIZE)),
        retry=_retry(doc.get("retry", {}), agent is not None),
        overlap=doc.get("overlap", "skip"),
        needs=tuple(doc.get("needs", ())),
        verify=_verify(doc["verify"]) if "verify" in doc else None,
        notify=_notify(doc["notify"]) if "notify" in doc else None,
        isolation=doc.get("isolation", "none"),
        land=LandSpec(**doc["land"]) if "land" in doc else None,
        expect_changes=bool(doc.get("expect", {}).get("changes", False)),
        runs_on=tuple(sorted(doc.get("runs_on", ()))),  # a set of labels: order means nothing
        budget=_budget(doc["budget"]) if "budget" in doc else None,
        rate=_rate(doc["rate"]) if "rate" in doc else None,
    )


def _retry(raw: Mapping[str, Any], agent: bool) -> RetryPolicy:
    """A `retry:` block (corrective retries are on by default for agents)."""
    backoff = raw.get("backoff", {})
    initial = _dur(backoff.get("initial"), 60.0) or 0.0
    return RetryPolicy(
        attempts=raw.get("attempts", 1),
        backoff=Backoff(
            initial=initial,
            max=_dur(backoff.get("max"), 1800.0) or 0.0,
            multiplier=float(backoff.get("multiplier", 2.0)),
            jitter=_dur(backoff.get("jitter"), initial / 10) or 0.0,
        ),
        retry_on=_matches(raw.get("retry_on")),
        never_on=_matches(raw.get("never_on")),
        corrective=raw.get("corrective", agent),
        resume=raw.get("resume", False),
        corrective_template=raw.get("corrective_template"),
    )


def _verify(raw: Any) -> VerifySpec:
    """A `verify:` argv, or a block with a command (a string runs through the shell)."""
    if isinstance(raw, list):
        return VerifySpec(argv=tuple(raw))
    cmd = raw["command"]
    as_shell = raw.get("shell", False) or isinstance(cmd, str)
    return VerifySpec(
        argv=() if as_shell else tuple(cmd),
        shell=(cmd if isinstance(cmd, str) else " ".join(cmd)) if as_shell else None,
        timeout=_dur(raw.get("timeout"), 600.0) or 600.0,
    )


def _notify(raw: Mapping[str, Any]) -> NotifySpec:
    return NotifySpec(
        events=tuple(raw.get("events", DEFAULT_NOTIFY_EVENTS)),
        webhook=raw.get("webhook"),
        command=tuple(raw.get("command", ())),
        ping_url=raw.get("ping_url"),
    )


def _agent(
    a: Mapping[str, Any], base: Path, config: GlobalConfig, primary: AgentSpec | None = None
) -> AgentSpec:
    """An `agent:` block as an AgentSpec; a fallback (`primary` given) takes its prompt."""
    agent = AgentSpec(
        kind=a["kind"],
        prompt=primary.prompt if primary else a.get("prompt"),
        prompt_file=(
            primary.prompt_file
            if primary
            else expand_path(a["prompt_file"], base)
            if "prompt_file" in a
            else None
        ),
        model=a.get("model"),
        max_turns=a.get("max_turns"),
        permission_mode=a.get("permission_mode"),
        allowed_tools=tuple(a.get("allowed_tools", ())),
        extra_args=tuple(a.get("extra_args", ())),
        disallowed_tools=tuple(a.get("disallowed_tools", ())),
        append_system_prompt=a.get("append_system_prompt"),
        max_budget_usd=a.get("max_budget_usd"),
        sandbox=a.get("sandbox"),
        approval_mode=a.get("approval_mode"),
        allow_commits=a.get("allow_commits", False),
        command=tuple(a.get("command", ())),
        output=a.get("output", "text"),
        limit_key=a.get("limit_key"),
        rate_limit_patterns=tuple(
            [
                *a.get("rate_limit_patterns", ()),
                *dict(config.defaults).get("rate_limit_patterns", ()),
            ]
        ),
    )
    if primary is None and a.get("fallback"):
        fallback = tuple(_agent(f, base, config, agent) for f in a["fallback"])
        agent = dataclasses.replace(agent, fallback=fallback)
    return agent


def _budget(raw: Mapping[str, Any]) -> Budget:
    per_run, per_day = raw.get("per_run"), raw.get("per_day")
    return Budget(
        per_run=None if per_run is None else float(per_run),
        per_day=None if per_day is None else float(per_day),
    )


def _rate(raw: Mapping[str, Any]) -> Rate:
    return Rate(max=int(raw["max"]), per=parse_duration(raw["per"]))


# -- the stored form back into values ----------------------------------------------------------


def job_from_dict(data: dict[str, Any]) -> JobSpec:
    """Inverse of `JobSpec.to_dict` (state files hold that form)."""
    d = dict(data)
    if d.get("schedule") is not None:
        d["schedule"] = Schedule(**d["schedule"])
    if d.get("agent") is not None:
        d["agent"] = _agent_from_dict(d["agent"])
    if d.get("budget") is not None:
        d["budget"] = Budget(**d["budget"])
    if d.get("rate") is not None:
        d["rate"] = Rate(**d["rate"])
    if d.get("land") is not None:
        d["land"] = LandSpec(**d["land"])
    r = dict(d["retry"])
    r["backoff"] = Backoff(**r["backoff"])
    r["retry_on"] = tuple(OutcomeMatch(**m) for m in r.get("retry_on", ()))
    r["never_on"] = tuple(OutcomeMatch(**m) for m in r.get("never_on", ()))
    d["retry"] = RetryPolicy(**r)
    if d.get("verify") is not None:
        v = dict(d["verify"])
        v["argv"] = tuple(v.get("argv", ()))
        d["verify"] = VerifySpec(**v)
    if d.get("notify") is not None:
        n = dict(d["notify"])
        n["events"] = tuple(n.get("events", ()))
        n["command"] = tuple(n.get("command", ()))
        d["notify"] = NotifySpec(**n)
    for key in ("command", "secrets", "needs", "runs_on"):
        d[key] = tuple(d.get(key, ()))
    for key in ("labels", "env"):
        d[key] = tuple(tuple(pair) for pair in d.get(key, ()))
    return JobSpec(**d)


def _agent_from_dict(data: Mapping[str, Any]) -> AgentSpec:
    a = dict(data)
    lists = ("allowed_tools", "extra_args", "disallowed_tools", "command", "rate_limit_patterns")
    for key in lists:
        a[key] = tuple(a.get(key, ()))
    a["fallback"] = tuple(_agent_from_dict(f) for f in a.get("fallback", ()))
    return AgentSpec(**a)
