"""The JSON Schemas themselves: editor help on every property, and the two validators agree."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO

SCHEMAS = ["job.schema.json", "config.schema.json", "run-record.schema.json"]


def _load(name: str) -> dict[str, Any]:
    return json.loads((REPO / "schema" / name).read_text())


def _properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            out.append((f"{path}.{key}", sub))
        for key, value in node.items():
            out += _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _properties(value, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_2020_12_with_id_and_help_on_every_property(name: str) -> None:
    schema = _load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(name)
    props = _properties(schema)
    assert len(props) > 10
    for path, sub in props:
        if "/if" in path:  # conditions in `if`, not properties a user writes
            continue
        assert sub.get("title") and sub.get("description"), f"{name}{path} lacks title/description"


@pytest.mark.parametrize("name", ["job.schema.json", "config.schema.json"])
def test_objects_refuse_unknown_keys(name: str) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{name}{path}"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(_load(name), "")


_JOB = _load("job.schema.json")
_FAST = jsonschema_rs.validator_for(_JOB)
_SLOW = jsonschema.Draft202012Validator(_JOB)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "1h",
            "90s",
            "PT2H",
            "1h\n",
            "soon",
            "high",
            "skip",
            "claude",
            "0 2 * * *",
            "x",
            "",
            "http://h",
            "ftp://h",
            "A_B",
            "1AB",
            "job-1",
            "Job 1",
            "٣h",
            "1h30m",
        ]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "cron",
                    "every",
                    "at",
                    "kind",
                    "prompt",
                    "output",
                    "command",
                    "attempts",
                    "initial",
                    "x",
                ]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=6,
)
_keys = st.sampled_from([*sorted(_JOB["properties"]), "silence_timout", "on"])


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_the_fast_validator_never_accepts_what_jsonschema_refuses(doc: dict[str, Any]) -> None:
    # schema_problems trusts jsonschema-rs only for "valid"; it must never say valid wrongly
    if _FAST.is_valid(doc):
        assert _SLOW.is_valid(doc), doc


def test_multi_host_keys_use_the_patterns_the_code_uses() -> None:
    from agentjobs.durations import PATTERN
    from agentjobs.spec import HOST_LABEL_PATTERN

    assert _JOB["properties"]["runs_on"]["items"]["pattern"] == HOST_LABEL_PATTERN
    assert _load("config.schema.json")["properties"]["lease"]["pattern"] == PATTERN


@pytest.mark.parametrize(
    ("runs_on", "valid"),
    [
        (["linux"], True),
        (["linux", "big", "x86_64", "gpu.A100-80g"], True),
        ([], False),
        (["linux", "linux"], False),
        ([""], False),
        (["big box"], False),
        (["linux/amd64"], False),
        ([1], False),
        ("linux", False),
    ],
)
def test_both_validators_agree_on_runs_on(runs_on: Any, valid: bool) -> None:
    doc = {"command": ["a"], "runs_on": runs_on}
    assert _FAST.is_valid(doc) is valid
    assert _SLOW.is_valid(doc) is valid
