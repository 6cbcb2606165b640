"""Install helpers: the crontab line and the systemd user units that run agentjobs unattended.

Pure functions of their arguments: they return the text to install and never print, read the
environment or touch files (the CLI resolves paths, reads and writes the crontab, writes units).
Every path must be absolute: cron and systemd start from a different working directory.
"""

from __future__ import annotations

import math
import re
import shlex

DEFAULT_KILL_GRACE = 10.0  # the job default (spec.py); not imported to keep this module light
MARKER_PREFIX = "# agentjobs: "
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
_STOP_MARGIN_S = 30  # on top of kill_grace: recording the interrupted attempts, releasing locks


def _check(value: str, what: str, absolute: bool = True) -> str:
    # A newline would end the crontab entry or the unit file line and start another one.
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must not contain a newline: {value!r}")
    if absolute and not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path: {value!r}")
    return value


def _cron_quote(value: str) -> str:
    # crontab(5): an unescaped % in the command ends it (the rest becomes stdin); cron turns
    # `\%` into `%` before the shell sees it, even inside single quotes.
    return shlex.quote(value).replace("%", "\\%")


def clean_path(path_env: str) -> str:
    """`PATH` for an unattended entry: each directory once, where it first appears (`/usr/bin/`
    is `/usr/bin`), without empty entries (they mean the working directory). A login shell's
    PATH often holds directories twice (profiles that prepend on every start), issue 13."""
    seen: set[str] = set()
    kept: list[str] = []
    for entry in path_env.split(":"):
        key = (entry.rstrip("/") or "/") if entry else ""
        if key and key not in seen:
            seen.add(key)
            kept.append(entry)
    return ":".join(kept)


def cron_marker(state_dir: str) -> str:
    """The comment above our crontab entry; one entry per state directory."""
    return MARKER_PREFIX + _check(state_dir, "state dir")


def cron_line(
    executable: str,
    jobs_dir: str,
    state_dir: str,
    path_env: str,
    log_file: str,
    workdir: str | None = None,
) -> str:
    """The crontab entry that runs `tick` every minute from `workdir` (default: the parent of
    `jobs_dir`), with `PATH` set (cron's own is `/usr/bin:/bin`; `clean_path`) and output
    appended to `log_file`."""
    directory = workdir if workdir is not None else jobs_dir.rstrip("/").rsplit("/", 1)[0] or "/"
    path_env = clean_path(_check(path_env, "PATH", absolute=False))
    parts = [
        f"cd {_cron_quote(_check(directory, 'working directory'))}",
        "&&",
        f"PATH={_cron_quote(path_env)}",
        _cron_quote(_check(executable, "executable")),
        "--jobs-dir",
        _cron_quote(_check(jobs_dir, "jobs dir")),
        "--state-dir",
        _cron_quote(_check(state_dir, "state dir")),
        "tick",
        f">> {_cron_quote(_check(log_file, 'log file'))} 2>&1",
    ]
    return "* * * * * " + " ".join(parts)


def add_to_crontab(existing_text: str, line: str, state_dir: str) -> str:
    """`existing_text` with our entry for `state_dir` (a marker comment, then `line`) in place
    of any earlier one, or appended; every other line is kept as it is. Idempotent."""
    marker = cron_marker(state_dir)
    old = existing_text.splitlines()
    kept: list[str] = []
    placed = False
    i = 0
    while i < len(old):
        current = old[i]
        if current == marker:
            i += 2  # the marker and the entry under it
            if not placed:
                kept += [marker, line]
                placed = True
            continue
        if current != line:  # the same entry without its marker (edited by hand)
            kept.append(current)
        i += 1
    if not placed:
        kept += [marker, line]
    return "\n".join(kept) + "\n"  # cron ignores a last line without its newline


def _unit_value(value: str) -> str:
    # systemd.unit(5): `%` starts a specifier; a value with these characters needs escaping.
    return value.replace("%", "%%")


def _exec_arg(value: str) -> str:
    # systemd.service(5) "Command lines": split at whitespace, double quotes group, C escapes,
    # `$` expands variables and `%` specifiers.
    escaped = _unit_value(value).replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    if escaped != value or not value or any(c.isspace() or c in "'\";" for c in value):
        return f'"{escaped}"'
    return value


def _environment(name: str, value: str) -> str:
    escaped = _unit_value(f"{name}={value}").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def systemd_units(
    executable: str,
    jobs_dir: str,
    state_dir: str,
    path_env: str,
    workdir: str,
    *,
    name: str = "agentjobs",
    daemon: bool = False,
    kill_grace: float = DEFAULT_KILL_GRACE,
) -> dict[str, str]:
    """User units by file name: `NAME.service` (one `tick`) and `NAME.timer` (every minute), or
    with `daemon` one long-running `NAME-daemon.service`. `kill_grace` is the largest grace of
    the jobs: a stop waits for it before systemd kills what is left."""
    if not _UNIT_NAME.match(name):
        raise ValueError(f"unit name {name!r} may hold only letters, digits and :_.-\\")
    path_env = clean_path(_check(path_env, "PATH", absolute=False))
    command = " ".join(
        _exec_arg(part)
        for part in (
            _check(executable, "executable"),
            "--jobs-dir",
            _check(jobs_dir, "jobs dir"),
            "--state-dir",
            _check(state_dir, "state dir"),
            "daemon" if daemon else "tick",
        )
    )
    stop_s = math.ceil(max(kill_grace, 0.0)) + _STOP_MARGIN_S
    service = [
        "[Service]",
        f"WorkingDirectory={_unit_value(_check(workdir, 'working directory'))}",
        f"Environment={_environment('PATH', path_env)}",
        f"ExecStart={command}",
        # SIGTERM to agentjobs only: it stops each attempt's process group itself (TERM,
        # kill_grace, KILL) and records it; systemd kills leftovers after TimeoutStopSec.
        "KillMode=mixed",
        f"TimeoutStopSec={stop_s}",
    ]
    where = f"jobs {jobs_dir}, state {state_dir}"
    if daemon:
        text = "\n".join(
            [
                "[Unit]",
                f"Description=agentjobs daemon ({_unit_value(where)})",
                "",
                *service[:1],
                "Type=simple",
                *service[1:],
                "Restart=on-failure",
                "RestartSec=5",
                "",
                "[Install]",
                "WantedBy=default.target",
                "",
            ]
        )
        return {f"{name}-daemon.service": text}
    unit = "\n".join(
        [
            "[Unit]",
            f"Description=agentjobs tick ({_unit_value(where)})",
            "",
            *service[:1],
            # A oneshot has no start timeout: a tick lasts as long as the attempts it starts.
            "Type=oneshot",
            *service[1:],
            "",
        ]
    )
    timer = "\n".join(
        [
            "[Unit]",
            f"Description=agentjobs tick every minute ({_unit_value(where)})",
            "",
            "[Timer]",
            "OnCalendar=minutely",
            "Persistent=true",
            "AccuracySec=1s",
            f"Unit={name}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return {f"{name}.service": unit, f"{name}.timer": timer}


def systemd_next_steps(units: dict[str, str]) -> str:
    """The command to run after writing `units` (agentjobs never runs systemctl itself)."""
    start = next((n for n in units if n.endswith(".timer")), None) or next(iter(units))
    return f"systemctl --user daemon-reload && systemctl --user enable --now {start}"
