"""The safe, bounded YAML reader."""

from __future__ import annotations

import time

from agentjobs.yamlfile import MAX_FILE_BYTES, load_documents


def _one(text: str | bytes) -> tuple[object, list[str]]:
    data = text.encode() if isinstance(text, str) else text
    docs, problems = load_documents("f.yaml", data)
    return (docs[0].value if docs else None), [p.render() for p in problems]


def test_timestamps_stay_strings_and_marks_point_at_values() -> None:
    docs, problems = load_documents("f.yaml", b"schedule:\n  at: 2026-12-01T09:30:00Z\n")
    assert problems == []
    assert docs[0].value == {"schedule": {"at": "2026-12-01T09:30:00Z"}}
    assert docs[0].where("schedule.at") == (2, 7)
    assert docs[0].where_key("schedule.at") == (2, 3)


def test_duplicate_keys_are_errors_not_silently_last_wins() -> None:
    value, problems = _one("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    assert problems == [
        "f.yaml:4:3: b: duplicate key `c` (first at line 3); keep one",
        "f.yaml:5:1: duplicate key `a` (first at line 1); keep one",
    ]
    assert value == {"a": 1, "b": {"c": 1}}


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    started = time.monotonic()
    _, problems = _one("\n".join(lines) + "\n")
    assert time.monotonic() - started < 1.0
    assert len(problems) == 1
    assert "expands to more than 100000 values (aliases expanding without bound?)" in problems[0]


def test_recursive_alias_and_deep_nesting_are_refused() -> None:
    _, problems = _one("a: &x [*x]\n")
    assert problems and "nesting deeper than 64 levels" in problems[0]
    _, problems = _one("[" * 5000 + "]" * 5000 + "\n")
    assert len(problems) == 1 and "nesting deeper than 64 levels" in problems[0]


def test_object_tags_are_refused_everywhere() -> None:
    for text in (
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/object:os.Foo {x: 1}\n",
        "a: !!python/name:os.system\n",
        "a: !custom x\n",
        "a: !!binary aGVsbG8=\n",
    ):
        value, problems = _one(text)
        assert value is None
        assert len(problems) == 1 and "is not allowed; remove it" in problems[0], problems


def test_size_encoding_and_nul_limits() -> None:
    _, problems = _one(b"a: " + b"x" * MAX_FILE_BYTES)
    assert problems == ["f.yaml:1:1: file is larger than the 1 MiB limit; split it up"]
    _, problems = _one(b"a: 1\nb: \xff\xfe\n")
    assert problems == ["f.yaml:2:4: file is not valid UTF-8; save it as UTF-8"]
    _, problems = _one(b"a: 1\n\x00\n")
    assert problems == ["f.yaml:2:1: file contains a NUL byte; is it a text file?"]


def test_byte_order_mark_and_multiple_documents() -> None:
    docs, problems = load_documents("f.yaml", "\ufeffa: 1\n---\nb: 2\n---\n".encode())
    assert problems == []
    assert [d.value for d in docs] == [{"a": 1}, {"b": 2}, None]
    assert docs[1].where("b") == (3, 4)


def test_merge_keys_still_work() -> None:
    value, problems = _one("base: &b {x: 1}\njob:\n  <<: *b\n  y: 2\n")
    assert problems == []
    assert value == {"base": {"x": 1}, "job": {"x": 1, "y": 2}}


def test_boolean_keys_keep_their_text() -> None:
    value, _ = _one("on: 1\n")
    assert value == {"on": 1}


def test_merge_keys_follow_yaml_precedence_and_are_bounded() -> None:
    value, problems = _one("base: &b {x: 1, y: 1}\nlabels: {<<: *b, y: 2}\n")
    assert problems == []
    assert value == {"base": {"x": 1, "y": 1}, "labels": {"x": 1, "y": 2}}
    lines = ["m0: &m0 {a: 1}"]
    for i in range(1, 20):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}")
    started = time.process_time()
    _, problems = _one("\n".join(lines) + "\n")
    assert time.process_time() - started < 2.0
    assert len(problems) == 1 and "expands to more than 100000 values" in problems[0]


def test_a_long_string_repeated_by_aliases_is_bounded() -> None:
    text = "s: &s " + "x" * 200_000 + "\nlist: [" + ", ".join(["*s"] * 1000) + "]\n"
    _, problems = _one(text)
    assert len(problems) == 1 and "expands to more than 4 MiB of text" in problems[0]
