"""Any job the schema allows (with valid cron, time zone, duration and time values) round-trips.

Instances come from `schema/job.schema.json` through hypothesis-jsonschema, with the free-form
strings that carry semantic rules swapped for enums of valid values (cron expressions, IANA
zones, durations, `at` times, regexes, file references, job names in `needs`) and the few
cross-field rules the schema cannot state applied after generation (`shell` goes with a string
`command`, a secret has no value in `env`). Everything else is kept as generated.

For each instance, written as YAML to a fresh jobs directory: `validate` exits 0 (warnings
allowed), `apply` exits 0, `plan` then exits 0 with every job "unchanged", a second `apply`
changes nothing (not a byte of state), and the stored spec reads back as an equal `JobSpec`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from agentjobs.spec import JobSpec, job_from_dict
from agentjobs.store import open_store
from agentjobs.validate import load_jobs_dir
from tests.conftest import REPO

# When a Hypothesis test fails, its pytest plugin imports libcst (to suggest a patch), whose import
# raises a DeprecationWarning from mypy_extensions; `filterwarnings = error` turns that into an
# INTERNALERROR that aborts the session and hides the failure. Import it once, quietly, up front.
with contextlib.suppress(ImportError), warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

CRONS = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "30 2 * * *",
    "*/5 * * * *",
    "0 6 * * 0",
    "15 9 * * 1-5",
    "0 0 1,15 * *",
    "0 */4 * * MON-FRI",
    "0 0 29 2 *",
    "59 23 31 12 *",
]
TIMEZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
]
DURATIONS = ["1s", "90s", "10m", "1h30m", "2h", "1.5h", "1d", "2w", "PT2H", "P1DT2H", "PT0.5M"]
SUBSECOND = ["500ms", "0.25s"]  # fine where the rule is "longer than zero"; `every` needs >= 1s
BACKOFF_INITIAL = ["1s", "30s", "1m", "PT1M"]  # never longer than any BACKOFF_MAX
BACKOFF_MAX = ["1m", "30m", "2h", "P1D"]
AT_TIMES = [
    "2031-06-01T09:30",
    "2031-06-01T09:30:15",
    "2032-02-29T23:59:59+05:30",
    "2035-12-31T00:00:00Z",
    "2030-03-31T02:30",  # a wall-clock time Europe/Berlin skips
    "2001-01-01T00:00",  # in the past: a warning, not an error
]
REGEXES = ["rate limit", "^fatal:", r"(?i)credit balance is too low", r"exit \d+", "[a-z]+$"]
HELPERS = ("helper-a", "helper-b")  # jobs written beside the generated one, for `needs`
PROMPT_FILE = "prompt.md"
ENV_FILE = "job.env"


def _enum(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": values}


def generation_schema() -> dict[str, Any]:
    """schema/job.schema.json with semantic free-form strings replaced by valid choices."""
    schema = copy.deepcopy(json.loads((REPO / "schema" / "job.schema.json").read_text()))
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    props = schema["properties"]

    schedule = props["schedule"]["properties"]
    schedule["cron"] = _enum(CRONS)
    schedule["timezone"] = _enum(TIMEZONES)
    schedule["every"] = _enum(DURATIONS)
    schedule["jitter"] = _enum(DURATIONS + SUBSECOND)
    schedule["at"] = _enum(AT_TIMES)

    for key in ("timeout", "silence_timeout", "kill_grace"):
        props[key] = _enum(DURATIONS + SUBSECOND)
    backoff = props["retry"]["properties"]["backoff"]["properties"]
    backoff["initial"] = _enum(BACKOFF_INITIAL)
    backoff["max"] = _enum(BACKOFF_MAX)
    backoff["jitter"] = _enum(DURATIONS + SUBSECOND)
    props["verify"]["oneOf"][1]["properties"]["timeout"] = _enum(DURATIONS)

    for key in ("retry_on", "never_on"):
        matcher = props["retry"]["properties"][key]["items"]["oneOf"][2]
        matcher["properties"]["output"] = _enum(REGEXES)

    props["agent"]["properties"]["prompt_file"] = _enum([PROMPT_FILE])
    props["agent"]["properties"]["rate_limit_patterns"]["items"] = _enum(REGEXES)
    props["env_file"] = _enum([ENV_FILE])
    # limits that can work: a rate's window within 7 days, per_run never above per_day, a
    # fallback that needs no command of its own
    props["rate"]["properties"]["per"] = _enum([d for d in DURATIONS if d != "2w"])
    props["budget"]["properties"]["per_run"] = {"type": "number", "enum": [0.5, 1]}
    props["budget"]["properties"]["per_day"] = {"type": "number", "enum": [1, 20]}
    fallback = props["agent"]["properties"]["fallback"]["items"]["properties"]
    fallback["kind"] = _enum(["claude", "codex", "gemini", "aider"])
    props["needs"]["items"] = _enum(list(HELPERS))
    return schema


def _without_nul(value: Any) -> Any:
    """No string may hold a NUL character (a semantic rule: paths and argv cannot)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def satisfy_cross_field_rules(job: dict[str, Any]) -> dict[str, Any]:
    """What the schema cannot say: `shell` pairs with a string command and never with an agent;
    a name listed in `secrets` has no value in `env`; no string holds a NUL character; a
    `max_log_size` written with a unit is at least 4KiB; `land` merge or review works on a
    worktree."""
    job = dict(_without_nul(job))
    if isinstance(job.get("max_log_size"), str):
        from agentjobs.sizes import parse_size

        try:
            if parse_size(job["max_log_size"]) < 4096:
                job["max_log_size"] = "4KiB"
        except ValueError:
            job.pop("max_log_size")
    if "agent" in job:
        job.pop("shell", None)
        agent = dict(job["agent"])
        if agent.get("kind") == "custom":
            agent.setdefault("command", ["my-agent"])
        else:
            agent.pop("command", None)
        job["agent"] = agent
    elif isinstance(job.get("command"), str):
        job["shell"] = True
    elif job.get("shell"):
        job["shell"] = False
    if "env" in job and "secrets" in job:
        job["env"] = {k: v for k, v in job["env"].items() if k not in job["secrets"]}
    if job.get("land", {}).get("mode") in ("merge", "review"):
        job["isolation"] = "worktree"
    return job


def job_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """Jobs from the generation schema, each optional key present about half the time.

    `from_schema` on the whole document tends to stop at the required minimum (a `command` and
    little else); drawing each top-level property from its own subschema gives every key a fair
    chance. The result is checked against the whole schema, so it is still schema-valid.
    """
    from jsonschema import Draft202012Validator

    schema = generation_schema()
    props = schema["properties"]
    valid = Draft202012Validator(schema).is_valid
    runs = st.one_of(
        st.fixed_dictionaries(
            {"command": from_schema(props["command"])},
            optional={"shell": from_schema(props["shell"])},
        ),
        st.fixed_dictionaries({"agent": from_schema(props["agent"])}),
    )
    # Schedules carry most of the semantics: one of none, cron, every or at, equally often.
    schedules = st.one_of(
        st.just({}),
        *(
            from_schema({**props["schedule"], "required": [kind]}).map(
                lambda schedule: {"schedule": schedule}
            )
            for kind in ("cron", "every", "at")
        ),
    )
    rest = st.fixed_dictionaries(
        {},
        optional={
            key: from_schema(sub)
            for key, sub in props.items()
            if key not in ("command", "shell", "agent", "schedule")
        },
    )
    jobs = st.builds(lambda run, when, more: {**more, **when, **run}, runs, schedules, rest)
    return (
        jobs.filter(lambda job: job.get("name") not in HELPERS)
        .map(satisfy_cross_field_rules)
        .filter(valid)
    )


@contextlib.contextmanager
def jobs_directory(job: dict[str, Any]) -> Iterator[tuple[Path, Path]]:
    """A fresh repo with the job in jobs.d/job.yaml, its helpers, prompt and env file."""
    with tempfile.TemporaryDirectory(prefix="agentjobs-prop-") as tmp:
        jobs = Path(tmp) / "repo" / "jobs.d"
        jobs.mkdir(parents=True)
        (jobs / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False, allow_unicode=True))
        for helper in HELPERS:
            (jobs / f"{helper}.yaml").write_text('command: ["true"]\n')
        (jobs / PROMPT_FILE).write_text("Fix the failing tests.\n")
        (jobs / ENV_FILE).write_text("LEVEL=3\n")
        yield jobs, Path(tmp) / "state"


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no slow `explain` phase
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(job=job_strategy())
def test_valid_specs_survive_apply_and_plan_unchanged(cli: Any, job: dict[str, Any]) -> None:
    with jobs_directory(job) as (jobs, state):
        common = ["--jobs-dir", str(jobs), "--state-dir", str(state)]
        shown = yaml.safe_dump(job, sort_keys=False)

        result = cli(*common, "validate")
        assert result.code == 0, f"validate refused\n{shown}\n{result.out}{result.err}"
        result = cli(*common, "apply")
        assert result.code == 0, f"apply refused\n{shown}\n{result.out}{result.err}"

        result = cli(*common, "--output", "json", "plan")
        assert result.code == 0, f"plan after apply\n{shown}\n{result.out}{result.err}"
        plan = json.loads(result.out)
        assert len(plan) == 1 + len(HELPERS)
        assert {c["action"] for c in plan} == {"unchanged"}, f"{shown}\n{result.out}"

        before = snapshot(state)
        result = cli(*common, "--output", "json", "apply")
        assert result.code == 0, f"second apply\n{shown}\n{result.out}{result.err}"
        assert {c["action"] for c in json.loads(result.out)} == {"unchanged"}
        assert snapshot(state) == before, f"a second apply rewrote the state\n{shown}"

        loaded = load_jobs_dir(jobs)
        spec = next(j.spec for j in loaded.jobs if j.source.endswith("job.yaml"))
        assert job_from_dict(spec.to_dict()) == spec
        stored = open_store(str(state)).applied()[spec.name]
        assert stored.spec_hash == spec.spec_hash()
        from_state: JobSpec = job_from_dict(dict(stored.spec))
        assert from_state == spec, f"the stored spec reads back differently\n{shown}"
