from __future__ import annotations

import re

import pytest

from agentjobs.durations import PATTERN, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        ("PT2H", 7200),
        ("P1D", 86400),
        ("PT1H30M", 5400),
        ("P1DT2H", 93600),
        ("PT0.5S", 0.5),
        ("P2W", 1209600),
    ],
)
def test_accepted_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert re.match(PATTERN, text)


@pytest.mark.parametrize("text", ["", "90", "10 minutes", "P", "PT", "1y", "h", "-5s", "P1H"])
def test_refused_forms_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"write e\.g\. 90s, 10m, 2h, 1d, 1h30m or ISO-8601 PT2H"):
        parse_duration(text)
    assert not re.match(PATTERN, text)


def test_format() -> None:
    assert [format_duration(s) for s in (0.25, 45, 5400, 93600, 86400)] == [
        "250ms",
        "45s",
        "1h30m",
        "1d2h",
        "1d",
    ]
