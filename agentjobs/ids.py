"""Run ids as people type them: a whole id or any unique prefix of one (git-style).

Run ids are ULIDs, whose first ten characters are the time: runs made in the same minute share
most of a short prefix. So a prefix is resolved against every run the verb can name, and one
that names several lists them instead of picking one (the verbs that take a RUN all use this:
cancel, logs, dlq, describe).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agentjobs.errors import UserError

SHOWN = 10  # candidates listed in an ambiguous prefix's message


def resolve_run(prefix: str, candidates: Mapping[str, str] | Iterable[str]) -> str:
    """The one candidate id that `prefix` names: an id equal to it, else the only one that
    starts with it (case-insensitive: a ULID is Crockford base32, which has one case).

    A Mapping's values describe its ids ("job fix, running") in the message that lists the
    candidates of an ambiguous prefix. Raises `UserError` (one line) when no id or several
    ids start with `prefix`, or when it is empty."""
    wanted = prefix.strip().upper()
    if not wanted:
        raise UserError("give a run id, or the start of one")
    described = candidates if isinstance(candidates, Mapping) else dict.fromkeys(candidates, "")
    exact = [c for c in described if c.upper() == wanted]
    if exact:
        return exact[0]
    matches = sorted(c for c in described if c.upper().startswith(wanted))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run {prefix.strip()}: no run id starts with it")
    listed = ", ".join(f"{c} ({described[c]})" if described[c] else c for c in matches[:SHOWN])
    more = f" and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
    raise UserError(
        f"run {prefix.strip()} is ambiguous: {len(matches)} runs start with it: {listed}{more}; "
        "give more of the id"
    )
