"""The environment an attempt runs with: ours, plus `env_file`, plus `env`, plus AGENTJOBS_*."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from agentjobs.errors import UserError

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: str) -> dict[str, str]:
    """KEY=value lines (dotenv): `#` comments, optional `export`, single or double quotes."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"env file {path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _LINE.match(raw)
        if not match:
            raise UserError(f"{path}:{number}: not a KEY=value line")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.split("=", 1)[1].strip().startswith('"'):
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def build_env(
    env: Mapping[str, str],
    env_file: str | None,
    extra: Mapping[str, str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (default: this process's environment), then the env file, then `env`, then
    `extra` (the AGENTJOBS_* variables), each overriding the one before."""
    result = dict(os.environ if base is None else base)
    if env_file:
        result.update(read_env_file(env_file))
    result.update(env)
    result.update(extra)
    return result


def secret_values(environment: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    """The values to redact: those of the named variables (short ones would redact noise)."""
    return [environment[name] for name in names if len(environment.get(name, "")) >= 4]
