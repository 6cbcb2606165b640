"""Job files in, `JobSpec`s or a full list of problems out.

Every file and every job is checked and every problem is reported (STYLE.md rule 6): YAML syntax
and safety (`yamlfile.py`), the JSON Schema in `schema/`, then semantic rules (cron, time zones,
durations, regexes, referenced files, unique names, `needs` that exist and form no cycle). Each
problem carries file, line, column and JSON path. Warnings never fail validation.
"""

from __future__ import annotations

import difflib
import gc
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from agentjobs.durations import PATTERN as DURATION_PATTERN
from agentjobs.durations import parse_duration
from agentjobs.errors import Problem
from agentjobs.spec import (
    CONFIG_FILE_NAME,
    HOST_LABEL_PATTERN,
    MIN_LEASE,
    GlobalConfig,
    JobSpec,
    build_config,
    build_job,
    source_dir,
)
from agentjobs.yamlfile import Document, join_path, load_documents

JOB_SUFFIXES = (".yaml", ".yml")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HOST_LABEL_RE = re.compile(HOST_LABEL_PATTERN)

# Names people bring from other tools (normalised: lowercase, no `_`/`-`) -> our key.
_ALIASES = {
    "retrypolicy": "retry",
    "retries": "retry",
    "maxretries": "retry",
    "backofflimit": "retry",
    "cwd": "workdir",
    "dir": "workdir",
    "workingdir": "workdir",
    "workingdirectory": "workdir",
    "cmd": "command",
    "run": "command",
    "script": "command",
    "args": "command",
    "exec": "command",
    "tz": "timezone",
    "timezone": "timezone",
    "interval": "every",
    "period": "every",
    "dependson": "needs",
    "depends": "needs",
    "after": "needs",
    "requires": "needs",
    "environment": "env",
    "envfile": "env_file",
    "dotenv": "env_file",
    "hangtimeout": "silence_timeout",
    "idletimeout": "silence_timeout",
    "silencetimeout": "silence_timeout",
    "concurrencypolicy": "overlap",
    "concurrency": "overlap",
    "notifications": "notify",
    "onfailure": "notify",
    "alerts": "notify",
    "suspend": "enabled",
    "disabled": "enabled",
    "activedeadlineseconds": "timeout",
    "deadline": "timeout",
    "killtimeout": "kill_grace",
    "gracetime": "kill_grace",
    "graceperiod": "kill_grace",
    "schedules": "schedule",
    "when": "schedule",
    "crontab": "cron",
    "prompts": "prompt",
    # `runsOn`/`runs-on` normalise to `runs_on` already; these are other tools' words for it
    "runon": "runs_on",
    "tags": "runs_on",  # GitLab CI runner tags
    "nodeselector": "runs_on",  # Kubernetes
    "constraint": "runs_on",  # Nomad
    "constraints": "runs_on",
    "host": "runs_on",
    "hosts": "runs_on",
    "hostlabels": "runs_on",
    "nodes": "runs_on",
    "leaseduration": "lease",
    "leasetimeout": "lease",
    "leasettl": "lease",
    "maxconcurrentperhost": "max_concurrent_per_host",
    "perhostconcurrency": "max_concurrent_per_host",
    "hostconcurrency": "max_concurrent_per_host",
}


@dataclass(frozen=True, slots=True)
class LoadedJob:
    """A valid job and where it was written."""

    spec: JobSpec
    source: str
    line: int
    # where `name` and `needs` were written, for the cross-file messages (not the whole
    # Document: keeping every file's node graph alive makes loading 10,000 files crawl)
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # spec.to_dict(), computed once
    spec_hash: str = ""
    schedule_hash: str = ""

    @classmethod
    def of(cls, spec: JobSpec, source: str, line: int, doc: Document | None = None) -> LoadedJob:
        data = spec.to_dict()
        positions = {}
        if doc is not None:
            paths = ["name", "needs", *(f"needs[{i}]" for i in range(len(spec.needs)))]
            positions = {path: doc.where(path) for path in paths}
        return cls(spec, source, line, positions, data, spec.spec_hash(), spec.schedule_hash())

    def where(self, path: str) -> tuple[int, int]:
        return self.positions.get(path, (self.line, 1))


@dataclass(frozen=True, slots=True)
class LoadResult:
    jobs: tuple[LoadedJob, ...]
    config: GlobalConfig
    problems: tuple[Problem, ...]
    files: int
    config_source: str | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


# -- schemas -------------------------------------------------------------------------------


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("agentjobs").joinpath("schema", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(name))


# -- turning jsonschema errors into messages people can act on -----------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The key the user most likely meant by `word`, if any."""
    options = list(choices)
    norm = word.lower().replace("_", "").replace("-", "")
    for option in options:
        if option.replace("_", "") == norm:
            return option
    alias = _ALIASES.get(norm)
    if alias in options:
        return alias
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _type_message(error: Any, doc: Document, path: str) -> str:
    value = error.instance
    expected = error.validator_value
    expected_list = expected if isinstance(expected, list) else [expected]
    names = {
        "string": "a string",
        "array": "a list",
        "object": "a mapping",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
    }
    want = " or ".join(names.get(str(t), str(t)) for t in expected_list)
    raw = doc.plain.get(path)
    key = path.rpartition(".")[2]
    if value is None:
        return f"is empty; give {want} or remove the key"
    if "string" in expected_list and isinstance(value, bool) and "enum" in error.schema:
        options = ", ".join(str(o) for o in error.schema["enum"])
        return f"YAML 1.1 read `{raw}` as a boolean; write one of {options}"
    if "string" in expected_list and isinstance(value, bool):
        return (
            f"YAML 1.1 read `{raw}` as the boolean {str(value).lower()}; "
            f'quote it if you meant the text: "{raw}"'
        )
    if "string" in expected_list and isinstance(value, int | float) and raw is not None:
        if ":" in raw:
            return f'YAML read `{raw}` as the number {value} (base-60 notation); quote it: "{raw}"'
        if error.schema.get("title") in {"Duration"} or key in {
            "timeout",
            "silence_timeout",
            "kill_grace",
            "every",
            "jitter",
            "initial",
            "max",
            "lease",
        }:
            return f"a duration needs a unit: write {raw}s or {raw}m (or ISO-8601 PT{raw}S)"
        return f'YAML read `{raw}` as a number; quote it: "{raw}"'
    if "boolean" in expected_list and isinstance(value, str):
        return f"expected true or false, got `{value}`"
    return f"expected {want}, got {_kind(value)}"


def _key_choice_message(error: Any) -> str | None:
    """For `oneOf: [{required: [a]}, {required: [b]}]`: 'exactly one of a, b'."""
    branches = error.validator_value
    if not all(set(b) == {"required"} and len(b["required"]) == 1 for b in branches):
        return None
    keys = [b["required"][0] for b in branches]
    present = [k for k in keys if isinstance(error.instance, dict) and k in error.instance]
    listed = ", ".join(keys[:-1]) + f" or {keys[-1]}"
    if not present:
        return f"needs exactly one of {listed}"
    return f"has {' and '.join(present)}; keep exactly one of {listed}"


def _pattern_message(error: Any) -> str:
    title = error.schema.get("title", "")
    value = error.instance
    if (
        title == "Duration"
        or "Duration" in title
        or error.schema.get("pattern", "").startswith("^((\\d")
    ):
        from agentjobs.durations import parse_duration

        try:
            parse_duration(value)
        except ValueError as exc:
            return str(exc)
    if "Name" in title or title == "Job name":
        return (
            f"`{value}` is not a valid job name: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    if title == "Host label":
        return _host_label_message(value)
    if "URL" in title:
        return f"`{value}` is not an http:// or https:// URL"
    if "Variable" in title:
        return f"`{value}` is not an environment variable name (letters, digits, '_')"
    return f"`{value}` does not match the expected form {error.validator_value}"


def _host_label_message(value: str) -> str:
    return f"`{value}` is not a host label: use letters, digits, '.', '_' and '-'"


def _messages(error: Any, doc: Document) -> list[tuple[str, str, bool]]:
    """(json path, message, at_key) for one jsonschema error; `at_key` points at the key."""
    path = ""
    for part in error.absolute_path:
        path = join_path(path, part)
    v = error.validator
    if v == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        out: list[tuple[str, str, bool]] = []
        for key in extra:
            hint = suggest(key, allowed)
            if hint:
                msg = f"unknown key `{key}`; did you mean `{hint}`?"
            else:
                msg = f"unknown key `{key}`; allowed here: {', '.join(allowed)}"
            out.append((join_path(path, key), msg, True))
        return out
    if v == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(path, f"missing required key `{k}`", False) for k in missing]
    if v == "type":
        return [(path, _type_message(error, doc, path), False)]
    if v == "enum":
        options = [str(o) for o in error.validator_value]
        hint = suggest(str(error.instance), options) if isinstance(error.instance, str) else None
        msg = f"`{error.instance}` is not one of {', '.join(options)}"
        if isinstance(error.instance, bool):
            msg = (
                f"YAML 1.1 read `{doc.plain.get(path, error.instance)}` as a boolean; "
                f"write one of {', '.join(options)}"
            )
        return [(path, msg + (f"; did you mean `{hint}`?" if hint else ""), False)]
    if v == "pattern":
        return [(path, _pattern_message(error), False)]
    if v == "propertyNames":
        key = error.instance
        return [(join_path(path, str(key)), f"`{key}` is not allowed as a key here", True)]
    if v in ("minItems", "minLength"):
        return [(path, "must not be empty", False)]
    if v == "minimum":
        return [(path, f"must be at least {error.validator_value}, got {error.instance}", False)]
    if v == "maximum":
        return [(path, f"must be at most {error.validator_value}, got {error.instance}", False)]
    if v == "uniqueItems":
        return [(path, "lists the same entry twice; remove the duplicate", False)]
    if v == "oneOf":
        choice = _key_choice_message(error)
        if choice:
            where = path or "job"
            return [(path, f"{where} {choice}" if path else f"a job {choice}", False)]
        # Explain with the branch whose type fits the value, when there is one.
        branches: dict[int, list[Any]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [
            errs
            for errs in branches.values()
            if not any(e.validator == "type" and not e.relative_path for e in errs)
        ]
        if fitting:
            out = []
            for sub in min(fitting, key=len):
                out.extend(_messages(sub, doc))
            if out:
                return out
        titles = [b.get("title", "?").lower() for b in error.validator_value]
        return [(path, f"expected {' or '.join(titles)}, got {_kind(error.instance)}", False)]
    return [(path, error.message, False)]


@cache
def _fast_validator(name: str) -> Any:
    """jsonschema-rs (Rust) answers "valid?" about 40 times faster than jsonschema; jsonschema
    still writes every message (it knows the paths and validators our hints are built on)."""
    try:
        import jsonschema_rs
    except ImportError:  # a platform without a wheel: jsonschema alone is correct, only slower
        return None
    return jsonschema_rs.validator_for(schema(name))


def schema_problems(doc: Document, file: str, schema_name: str) -> list[Problem]:
    return _schema_check(doc, file, schema_name)[0]


def _schema_check(
    doc: Document, file: str, schema_name: str
) -> tuple[list[Problem], frozenset[str]]:
    """The schema's problems with `doc`, and the top-level keys they are in (an unknown key is
    one): the semantic checks leave those keys alone and check every other one."""
    fast = _fast_validator(schema_name)
    try:
        if fast is not None and fast.is_valid(doc.value):
            return [], frozenset()
    except (ValueError, OverflowError, TypeError):
        pass  # a value the Rust side cannot represent (a huge integer): jsonschema decides

    problems = []
    seen: set[str] = set()
    known = schema(schema_name).get("properties", {})
    refused = (
        {key for key in doc.value if key not in known} if isinstance(doc.value, dict) else set()
    )
    for error in _validator(schema_name).iter_errors(doc.value):
        if error.absolute_path:
            refused.add(str(error.absolute_path[0]))
        for path, message, at_key in _messages(error, doc):
            if path in seen:  # one message per place: the first is the most specific
                continue
            seen.add(path)
            line, column = doc.where_key(path) if at_key else doc.where(path)
            problems.append(Problem(file, line, column, path, message))
    return problems, frozenset(refused)


# -- semantic checks ---------------------------------------------------------------------------


class _Checker:
    def __init__(
        self,
        file: str,
        doc: Document,
        schema_name: str = "job.schema.json",
        refused: frozenset[str] = frozenset(),
    ) -> None:
        self.file = file
        self.doc = doc
        self.schema_name = schema_name
        self.problems: list[Problem] = []
        # top-level keys the schema refused: left out of the semantic checks, and a rule that
        # reads one of them (even only its absence) is skipped rather than misled
        self.refused = refused

    def trusts(self, *keys: str) -> bool:
        return not self.refused.intersection(keys)

    def valid_part(self, raw: dict[str, Any]) -> dict[str, Any]:
        """`raw` without the keys the schema refused: what the semantic checks may read."""
        if not self.refused:
            return raw
        return {key: value for key, value in raw.items() if key not in self.refused}

    def error(self, path: str, message: str) -> None:
        line, column = self.doc.where(path)
        self.problems.append(Problem(self.file, line, column, path, message))

    def warn(self, path: str, message: str) -> None:
        line, column = self.doc.where(path)
        self.problems.append(Problem(self.file, line, column, path, message, "warning"))


def _check_job(raw: dict[str, Any], source: Path, check: _Checker, config: GlobalConfig) -> None:
    from agentjobs.schedule import check_cron, check_timezone
    from agentjobs.spec import parse_at

    base = source_dir(source.parent)
    schedule = raw.get("schedule")
    if schedule is not None:
        tz = schedule.get("timezone") or dict(config.defaults).get("timezone", "UTC")
        if "timezone" in schedule and (msg := check_timezone(schedule["timezone"])):
            check.error("schedule.timezone", msg)
        if "cron" in schedule and (msg := check_cron(schedule["cron"])):
            check.error("schedule.cron", msg)
        if "at" in schedule:
            try:
                moment = parse_at(schedule["at"], tz if not check_timezone(tz) else "UTC")
            except OverflowError:
                check.error("schedule.at", f"`{schedule['at']}` is out of range in {tz}")
            except ValueError:
                check.error(
                    "schedule.at",
                    f"`{schedule['at']}` is not an ISO-8601 time; write e.g. '2026-12-01T09:30' "
                    "or '2026-12-01T09:30:00+01:00'",
                )
            else:
                if moment < datetime.now(UTC):
                    check.warn("schedule.at", f"{schedule['at']} is in the past")
        if "timezone" in schedule and "every" in schedule:
            check.warn("schedule.timezone", "timezone has no effect on `every` schedules")
    command = raw.get("command")
    if isinstance(command, str) and not raw.get("shell") and check.trusts("shell"):
        check.error(
            "command",
            "command is a string; write it as a list ([make, test]) or set `shell: true`",
        )
    if isinstance(command, list) and raw.get("shell"):
        check.error("shell", "`shell: true` takes a string command; write command as one string")
    if raw.get("shell") and "agent" in raw:
        check.error("shell", "`shell` applies to `command`, not to `agent`")
    agent = raw.get("agent")
    if agent and (agent.get("kind") == "custom") != ("command" in agent):
        check.error(
            "agent.command" if "command" in agent else "agent",
            "`command` goes with `kind: custom` (and kind custom needs it)",
        )
    for i, pattern in enumerate((agent or {}).get("rate_limit_patterns", [])):
        try:
            re.compile(pattern)
        except re.error as exc:
            check.error(f"agent.rate_limit_patterns[{i}]", f"invalid regular expression: {exc}")
    if agent and "prompt_file" in agent:
        path = os.path.join(base, os.path.expanduser(agent["prompt_file"]))
        if not os.path.isfile(path):
            check.error(
                "agent.prompt_file",
                f"prompt file {agent['prompt_file']} not found (looked in {base})",
            )
    if "env_file" in raw:
        path = os.path.join(base, os.path.expanduser(os.path.expandvars(raw["env_file"])))
        if not os.path.isfile(path):
            check.error("env_file", f"env file {raw['env_file']} not found (looked in {base})")
    for name in raw.get("secrets", []):
        if name in raw.get("env", {}):
            check.error(
                f"env.{name}",
                f"`{name}` is a secret but has a value in the job file; move it to env_file or "
                "the environment",
            )
    retry = raw.get("retry", {})
    for key in ("retry_on", "never_on"):
        for i, item in enumerate(retry.get(key, [])):
            if isinstance(item, dict):
                try:
                    re.compile(item["output"])
                except re.error as exc:
                    check.error(f"retry.{key}[{i}].output", f"invalid regular expression: {exc}")
    for i, label in enumerate(raw.get("runs_on", [])):
        # jsonschema's `$` (Python re.search) also matches before a final newline
        if not HOST_LABEL_RE.fullmatch(label):
            check.error(f"runs_on[{i}]", "a host label cannot end with a line break; remove it")
    if "workdir" in raw and "\x00" not in raw["workdir"]:
        expanded = os.path.expandvars(raw["workdir"])
        if "$" in expanded:
            check.warn("workdir", f"{raw['workdir']}: environment variable not set here")
        elif not os.path.isdir(os.path.join(base, os.path.expanduser(expanded))):
            check.warn("workdir", f"{raw['workdir']} does not exist on this machine")


def _walk(value: Any, node: dict[str, Any], parts: tuple[str | int, ...], check: _Checker) -> None:
    """Checks the schema cannot express, on every value: durations parse within limits,
    strings hold no NUL character, numbers are finite. (The path is joined only for an error:
    this runs over every value of every file.)"""
    if isinstance(value, str):
        if "\x00" in value:
            check.error(_joined(parts), "contains a NUL character; remove it")
        elif node.get("pattern") == DURATION_PATTERN:
            try:
                parse_duration(value)
            except ValueError as exc:
                check.error(_joined(parts), str(exc))
    elif isinstance(value, dict):
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        default = extra if isinstance(extra, dict) else {}
        for key, item in value.items():
            if "\x00" in key:
                check.error(_joined((*parts, key)), "contains a NUL character; remove it")
            _walk(item, props.get(key, default), (*parts, key), check)
    elif isinstance(value, list):
        items = node.get("items")
        sub = items if isinstance(items, dict) else {}
        for index, item in enumerate(value):
            _walk(item, sub, (*parts, index), check)
    elif isinstance(value, float) and not math.isfinite(value):
        check.error(_joined(parts), f"{value} is not a finite number")


def _joined(parts: tuple[str | int, ...]) -> str:
    path = ""
    for part in parts:
        path = join_path(path, part)
    return path


def _check_durations(
    raw: dict[str, Any], check: _Checker, config: GlobalConfig | None = None
) -> None:
    from agentjobs.durations import format_duration, parse_duration

    before = len(check.problems)
    _walk(raw, schema(check.schema_name), (), check)
    if len(check.problems) > before:
        return  # the comparisons below need durations that parse
    timeout = raw.get("timeout") or (dict(config.defaults).get("timeout") if config else None)
    for key in ("timeout", "silence_timeout", "kill_grace"):
        if key in raw and parse_duration(raw[key]) <= 0:
            check.error(key, f"{key} must be longer than zero")
    if "max_log_size" in raw:
        from agentjobs.sizes import parse_size
        from agentjobs.spec import MIN_MAX_LOG_SIZE

        if parse_size(raw["max_log_size"]) < MIN_MAX_LOG_SIZE:
            check.error(
                "max_log_size", f"max_log_size must be at least {MIN_MAX_LOG_SIZE} bytes (4KiB)"
            )
    if (
        timeout
        and check.trusts("timeout")
        and "silence_timeout" in raw
        and (parse_duration(raw["silence_timeout"]) >= parse_duration(timeout))
    ):
        check.warn("silence_timeout", "silence_timeout is not shorter than timeout: it never fires")
    backoff = raw.get("retry", {}).get("backoff", {})
    if (
        "initial" in backoff
        and "max" in backoff
        and (parse_duration(backoff["initial"]) > parse_duration(backoff["max"]))
    ):
        check.error("retry.backoff.max", "max is shorter than initial; raise max or lower initial")
    every = raw.get("schedule", {}).get("every")
    if every is not None and parse_duration(every) < 1:
        check.error("schedule.every", "every must be at least 1s")
    lease = raw.get("lease")  # the global config's
    if lease is not None and parse_duration(lease) < MIN_LEASE:
        check.error("lease", f"lease must be at least {format_duration(MIN_LEASE)}")
    _check_limits(raw, check)
    _check_land(raw, check)


def _check_limits(raw: dict[str, Any], check: _Checker) -> None:
    """Rates (a job's `rate`, the config's `rates`) and budgets that can work."""
    from agentjobs.durations import parse_duration
    from agentjobs.limits import MAX_RATE_WINDOW_S

    rates = {"rate": raw["rate"]} if isinstance(raw.get("rate"), dict) else {}
    rates.update({f"rates.{k}": v for k, v in (raw.get("rates") or {}).items()})
    for where, rate in rates.items():
        per = parse_duration(rate["per"])
        if not 1 <= per <= MAX_RATE_WINDOW_S:
            check.error(f"{where}.per", "a rate's window must be between 1s and 7d")
    budget = raw.get("budget") or {}
    if budget.get("per_run") and budget.get("per_day") and budget["per_run"] > budget["per_day"]:
        check.error("budget.per_run", "per_run is more than per_day: no attempt could ever start")
    if budget and not isinstance(raw.get("agent"), dict) and check.trusts("agent"):
        check.warn("budget", "budget applies to agent jobs only: a command job costs nothing")
    for index, other in enumerate((raw.get("agent") or {}).get("fallback", ())):
        if other.get("kind") == "custom" and not other.get("command"):
            check.error(f"agent.fallback[{index}].command", "a custom fallback needs a command")


def _check_land(raw: dict[str, Any], check: _Checker) -> None:
    """`land` merge and review work on a run's own branch: they need `isolation: worktree`."""
    land = raw.get("land")
    if not isinstance(land, dict) or land.get("mode") in (None, "branch"):
        return
    if raw.get("isolation") != "worktree" and check.trusts("isolation"):
        check.error(
            "land.mode",
            f"land mode {land['mode']} needs a branch per run: add `isolation: worktree`",
        )


# -- files -------------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def summary(problems: Sequence[Problem], jobs: int = 0, files: int = 0) -> str:
    """The one closing line of `validate`, `plan`, `apply` and `watch` (issue 13): `2 errors in
    1 file` when anything is wrong (counted from `problems`), else `ok: 3 jobs in 2 files`; with
    `, 1 warning` when there are warnings."""
    errors = [p for p in problems if p.severity == "error"]
    warnings = len(problems) - len(errors)
    if errors:
        text = f"{_count(len(errors), 'error')} in {_count(len({p.file for p in errors}), 'file')}"
    else:
        text = f"ok: {_count(jobs, 'job')} in {_count(files, 'file')}"
    return text + (f", {_count(warnings, 'warning')}" if warnings else "")


def job_files(directory: Path) -> list[Path]:
    """The job files in a jobs directory (not recursive), in name order, without the config."""
    if not directory.is_dir():
        return []
    names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.name.endswith(JOB_SUFFIXES)
        and entry.name != CONFIG_FILE_NAME
        and not entry.name.startswith(".")
        and entry.is_file()
    )
    return [directory / name for name in names]


def _read(path: Path) -> tuple[bytes | None, Problem | None]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(2 * 1024 * 1024)
    except OSError as exc:
        return None, Problem(str(path), 1, 1, "", f"cannot read: {exc.strerror}")
    return data, None


def _load_config(path: Path | None) -> tuple[GlobalConfig, list[Problem]]:
    if path is None or not path.is_file():
        return build_config(None), []
    data, problem = _read(path)
    if data is None:
        return build_config(None), [problem] if problem else []
    docs, problems = load_documents(str(path), data)
    if problems:
        return build_config(None), problems
    docs = [d for d in docs if d.value is not None]
    if not docs:
        return build_config(None), []
    if len(docs) > 1:
        return build_config(None), [
            Problem(str(path), 1, 1, "", "the global config is one document")
        ]
    doc = docs[0]
    if not isinstance(doc.value, dict):
        return build_config(None), [
            Problem(str(path), 1, 1, "", "the global config must be a mapping of settings")
        ]
    problems, refused = _schema_check(doc, str(path), "config.schema.json")
    check = _Checker(str(path), doc, "config.schema.json", refused)
    valid = check.valid_part(doc.value)
    from agentjobs.schedule import check_timezone

    if "timezone" in valid and (msg := check_timezone(valid["timezone"])):
        check.error("timezone", msg)
    _check_durations(valid, check)
    problems.extend(check.problems)
    if any(p.severity == "error" for p in problems):
        return build_config(None), problems
    return build_config(doc.value), problems


def _load_file(path: Path, config: GlobalConfig) -> tuple[list[LoadedJob], list[Problem]]:
    file = str(path)
    data, problem = _read(path)
    if data is None:
        return [], [problem] if problem else []
    docs, problems = load_documents(file, data)
    docs = [d for d in docs if d.value is not None]
    jobs: list[LoadedJob] = []
    for doc in docs:
        line = doc.where("")[0]
        if not isinstance(doc.value, dict):
            problems.append(
                Problem(file, line, 1, "", f"a job is a mapping of keys, got {_kind(doc.value)}")
            )
            continue
        found, refused = _schema_check(doc, file, "job.schema.json")
        check = _Checker(file, doc, refused=refused)
        if "name" not in doc.value:
            if len(docs) > 1:
                check.error("", "this file holds several jobs: give each one a `name`")
            elif not NAME_RE.match(path.stem):
                check.error(
                    "",
                    f"the file name `{path.stem}` is not a valid job name; set `name:` or rename "
                    "the file (lowercase letters, digits, '.', '_', '-')",
                )
        # semantic problems of the keys the schema accepted are reported with its problems
        # (issue 13): one run of validate shows all of them
        valid = check.valid_part(doc.value)
        _check_job(valid, path, check, config)
        _check_durations(valid, check, config)
        found.extend(check.problems)
        problems.extend(found)
        if not any(p.severity == "error" for p in found):
            jobs.append(LoadedJob.of(build_job(doc.value, path, config), file, line, doc))
    return jobs, problems


def _words(name: str) -> set[str]:
    """The words of a job name, singular: `fix-tests` -> {fix, test}."""
    return {w.removesuffix("s") for w in re.split(r"[-_.]", name) if len(w) > 2}


def _sharing_a_word(name: str, names: Iterable[str]) -> str | None:
    """The job name that shares a word with `name` and is most like it: `needs: [fix-test]`
    finds `nightly-tests` where spelling alone (difflib) finds nothing (issue 13)."""
    words = _words(name)
    sharing = sorted(other for other in names if words & _words(other))
    if not sharing:
        return None
    return max(sharing, key=lambda other: difflib.SequenceMatcher(None, name, other).ratio())


def _cross_checks(jobs: Sequence[LoadedJob], report: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    by_name: dict[str, LoadedJob] = {}
    for job in jobs:
        first = by_name.get(job.spec.name)
        if first is not None:
            if job.source in report:
                problems.append(
                    Problem(
                        job.source,
                        *job.where("name"),
                        "name",
                        f"job name `{job.spec.name}` is already used at "
                        f"{first.source}:{first.line}; "
                        "names must be unique",
                    )
                )
            continue
        by_name[job.spec.name] = job
    for job in by_name.values():
        if job.source not in report:
            continue
        for i, need in enumerate(job.spec.needs):
            if need == job.spec.name:
                problems.append(
                    Problem(
                        job.source,
                        *job.where(f"needs[{i}]"),
                        f"needs[{i}]",
                        "a job cannot need itself",
                    )
                )
            elif need not in by_name:
                hint = suggest(need, by_name) or _sharing_a_word(need, by_name)
                problems.append(
                    Problem(
                        job.source,
                        *job.where(f"needs[{i}]"),
                        f"needs[{i}]",
                        f"no job named `{need}`" + (f"; did you mean `{hint}`?" if hint else ""),
                    )
                )
    # cycles, reported once each, at the job where the cycle is first entered
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        trail.append(name)
        for need in by_name[name].spec.needs:
            if need not in by_name or need == name:
                continue
            if state.get(need) == 1:
                cycle = [*trail[trail.index(need) :], need]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    job = by_name[need]
                    problems.append(
                        Problem(
                            job.source,
                            *job.where("needs"),
                            "needs",
                            f"`needs` forms a cycle: {' -> '.join(cycle)}; remove one link",
                        )
                    )
            elif need not in state:
                visit(need, trail)
        trail.pop()
        state[name] = 2

    for name in sorted(by_name):
        if name not in state:
            visit(name, [])
    return problems


PARALLEL_FROM = 2000  # files; below this a second process costs more than it saves


_Plain = tuple[dict[str, Any], str, int, dict[str, tuple[int, int]], str, str]


def _load_chunk(
    paths: list[Path], config: GlobalConfig
) -> list[tuple[list[_Plain], list[Problem]]]:
    """In a worker process: load files and send the jobs back as plain data (frozen dataclasses
    unpickle slowly; dicts and tuples do not)."""
    out = []
    with _collector_paused():
        for path in paths:
            jobs, problems = _load_file(path, config)
            plain = [
                (j.data, j.source, j.line, j.positions, j.spec_hash, j.schedule_hash) for j in jobs
            ]
            out.append((plain, problems))
    return out


def _unplain(plain: _Plain) -> LoadedJob:
    from agentjobs.spec import job_from_dict

    data, source, line, positions, spec_hash, schedule_hash = plain
    return LoadedJob(job_from_dict(data), source, line, positions, data, spec_hash, schedule_hash)


def _load_files(
    paths: list[Path], config: GlobalConfig
) -> list[tuple[Path, tuple[list[LoadedJob], list[Problem]]]]:
    """Every file's jobs and problems, in order. Thousands of files are read by one forked
    process per core (parsing is CPU-bound Python); results come back in file order."""
    import threading

    workers = min(os.cpu_count() or 1, 4)
    if len(paths) < PARALLEL_FROM or workers < 2 or threading.active_count() > 1:
        return [(path, _load_file(path, config)) for path in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(paths) // workers)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(chunks), mp_context=context) as pool:
        results = pool.map(_load_chunk, chunks, [config] * len(chunks))
        loaded = [
            ([_unplain(plain) for plain in jobs], problems)
            for chunk in results
            for jobs, problems in chunk
        ]
    return list(zip(paths, loaded, strict=True))


def _load_directory(
    folder: Path, report: list[Path]
) -> tuple[GlobalConfig, list[LoadedJob], list[Problem], str | None]:
    """One jobs directory: its own `agentjobs.yaml`, its files; problems for `report` only."""
    config_path = folder / CONFIG_FILE_NAME
    config, problems = _load_config(config_path)
    reported = {str(p) for p in report}
    context = job_files(folder)
    known = {os.path.abspath(p) for p in report}
    ordered = report + [p for p in context if os.path.abspath(p) not in known]
    jobs: list[LoadedJob] = []
    for path, (file_jobs, file_problems) in _load_files(list(dict.fromkeys(ordered)), config):
        jobs.extend(file_jobs)
        if str(path) in reported:
            problems.extend(file_problems)
    problems.extend(_cross_checks(jobs, reported))
    source = str(config_path) if config_path.is_file() else None
    return config, [j for j in jobs if j.source in reported], problems, source


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Loading allocates many small objects and frees none: the cyclic collector would scan the
    growing heap again and again (quadratic in the number of files) and find nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(paths: Sequence[Path]) -> LoadResult:
    """Validate job files and build their specs.

    `paths` are files or directories. Each directory involved is read with its own global config
    (`agentjobs.yaml` beside the files) and problems are reported for the paths given; names and
    `needs` are checked against every job file in the same directory, so a pre-commit hook that
    passes only the changed files still sees the whole set. Naming a config file checks it and
    every job in its directory (the defaults it sets apply to all of them).
    """
    with _collector_paused():
        return _load(paths)


def _load(paths: Sequence[Path]) -> LoadResult:
    problems: list[Problem] = []
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        if path.is_dir():
            by_folder.setdefault(path, []).extend(job_files(path))
        elif path.name == CONFIG_FILE_NAME:
            by_folder.setdefault(path.parent, []).extend(job_files(path.parent))
        elif path.exists():
            by_folder.setdefault(path.parent, []).append(path)
        else:
            problems.append(Problem(str(path), 1, 1, "", "no such file or directory"))
    jobs: list[LoadedJob] = []
    config = build_config(None)
    config_source = None
    files = 0
    for index, (folder, report) in enumerate(by_folder.items()):
        report = list(dict.fromkeys(report))
        folder_config, folder_jobs, folder_problems, source = _load_directory(folder, report)
        if index == 0:
            config, config_source = folder_config, source
        jobs.extend(folder_jobs)
        problems.extend(folder_problems)
        files += len(report)
    problems.sort(key=lambda p: (p.file, p.line, p.column, p.severity))
    return LoadResult(
        jobs=tuple(jobs),
        config=config,
        problems=tuple(problems),
        files=files,
        config_source=config_source,
    )


def load_jobs_dir(jobs_dir: Path) -> LoadResult:
    """Everything in a jobs directory: the set `plan` and `apply` work on."""
    return load([jobs_dir])
