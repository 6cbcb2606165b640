"""Safe, bounded YAML reading that remembers where every value came from.

PyYAML's safe loader still keeps the last of two duplicate keys silently, expands aliases without
bound (the "billion laughs" file) and turns timestamps into `datetime` objects. We compose the node
graph with PyYAML and build plain values ourselves, so we can refuse duplicates, count what aliases
expand to, keep timestamps as strings (the schema decides what a time is), and record the line and
column of each JSON path for error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from agentjobs.errors import Problem

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000  # values built from one file, aliases expanded
MAX_DEPTH = 64
MAX_EXPANDED_BYTES = 4 * 1024 * 1024  # scalar text once aliases are expanded
_STR = "tag:yaml.org,2002:str"
_ALLOWED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("map", "seq", "str", "int", "float", "bool", "null")
)


_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader minus the timestamp resolver: `at: 2026-12-01T10:00` stays a string."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        # libyaml asks Python to resolve every plain scalar; job files repeat the same few
        # values ("high", "1h", "claude"), so remember the answers.
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_RESOLVED) > 50_000:
                    _RESOLVED.clear()
                _RESOLVED[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


_RESOLVED: dict[str, str] = {}


class _PyLoader(yaml.SafeLoader):
    """The pure-Python parser, for files nested deeper than libyaml's C stack is safe with: its
    recursion ends in a RecursionError we report, where libyaml's would crash the process."""


_RESOLVERS = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.yaml_implicit_resolvers = _RESOLVERS
_PyLoader.yaml_implicit_resolvers = _RESOLVERS


_DEEP_INDENT = re.compile(rf"^[ -]{{{4 * MAX_DEPTH + 1},}}", re.MULTILINE)


def _shallow(text: str) -> bool:
    """Whether libyaml's recursive C parser is safe on `text`: no deep flow nesting (counted
    without regard to quotes, so an over-estimate) and no deep indentation."""
    if text.count("[") + text.count("{") > MAX_DEPTH:
        depth = deepest = 0
        for char in text:
            if char in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif char in "]}":
                depth = max(0, depth - 1)
        if deepest > MAX_DEPTH:
            return False
    return _DEEP_INDENT.search(text) is None


@dataclass(slots=True)
class Document:
    """One YAML document: its value and the (line, column) of every JSON path in it (1-based)."""

    value: Any
    # the YAML node each path came from; its mark is turned into (line, column) when asked
    marks: dict[str, yaml.Node] = field(default_factory=dict)
    key_marks: dict[str, yaml.Node] = field(default_factory=dict)
    # The source text of plain scalars that YAML turned into numbers, booleans or null, so error
    # messages can say "YAML read `12:30` as 750".
    plain: dict[str, str] = field(default_factory=dict)

    def where(self, path: str) -> tuple[int, int]:
        """Line and column of `path`, or of its nearest ancestor that has one."""
        probe = path
        while True:
            if probe in self.marks:
                return _position(self.marks[probe])
            if not probe:
                return (1, 1)
            probe = parent_path(probe)

    def where_key(self, path: str) -> tuple[int, int]:
        """Line and column of the key that introduced `path` (for unknown-key errors)."""
        node = self.key_marks.get(path)
        return _position(node) if node is not None else self.where(path)


def _position(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def join_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def parent_path(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


class _TooBig(Exception):
    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.node = node


class _Builder:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.count = 0
        self.text_bytes = 0
        self.marks: dict[str, yaml.Node] = {}
        self.key_marks: dict[str, yaml.Node] = {}
        self.plain: dict[str, str] = {}
        self.problems: list[tuple[yaml.Node, str, str]] = []

    def build(self, node: yaml.Node, path: str, depth: int) -> Any:
        self._count(node)
        if isinstance(node, yaml.ScalarNode):
            self.text_bytes += len(node.value)
            if self.text_bytes > MAX_EXPANDED_BYTES:
                raise _TooBig(
                    "the file expands to more than 4 MiB of text (aliases repeating long "
                    "values?); write the values out or use fewer aliases",
                    node,
                )
        if depth > MAX_DEPTH:
            raise _TooBig(f"nesting deeper than {MAX_DEPTH} levels; flatten the file", node)
        self.marks.setdefault(path, node)
        if node.tag not in _ALLOWED_TAGS:
            # Object tags (`!!python/object/apply:...`) and custom tags are refused, on
            # mappings and sequences as much as on scalars.
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag!r} is not allowed; remove it", node.start_mark
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, join_path(path, i), depth + 1) for i, item in enumerate(node.value)
            ]
        if node.tag == _STR:
            return node.value  # the common case, without PyYAML's bookkeeping
        value = self.loader.yaml_constructors[node.tag](self.loader, node)
        if not isinstance(value, str) and isinstance(node.value, str):
            self.plain[path] = node.value
        return value

    def _key(self, key_node: yaml.Node) -> str:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _ALLOWED_TAGS:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain string", key_node.start_mark
            )
        if key_node.tag == _STR:
            return str(key_node.value)
        key = self.loader.construct_object(key_node)
        # `on: x` and `yes: x` read as booleans in YAML 1.1, `1: x` as a number: keep the text.
        return key if isinstance(key, str) else str(key_node.value)

    def _merged(self, value: yaml.Node, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key, value) pairs a `<<` merge brings, in precedence order, each one counted
        against the value limit (a chain of merges must not expand without bound)."""
        if depth > MAX_DEPTH:
            raise _TooBig(f"nesting deeper than {MAX_DEPTH} levels; flatten the file", value)
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "`<<` merges mappings only", source.start_mark
                )
            nested: list[tuple[yaml.Node, yaml.Node]] = []
            for key_node, value_node in source.value:
                self._count(key_node)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    nested.extend(self._merged(value_node, depth + 1))
                else:
                    pairs.append((key_node, value_node))
            pairs.extend(nested)  # a source's own keys win over what it merges in
        return pairs

    def _count(self, node: yaml.Node) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(
                f"the file expands to more than {MAX_NODES} values (aliases expanding without "
                "bound?); write the values out or use fewer aliases",
                node,
            )

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.extend(self._merged(value_node, depth + 1))
                continue
            key = self._key(key_node)
            child = join_path(path, key)
            if key in out:
                first = _position(self.key_marks[child])[0] if child in self.key_marks else 0
                self.problems.append(
                    (key_node, path, f"duplicate key `{key}` (first at line {first}); keep one")
                )
                continue
            self.key_marks[child] = key_node
            out[key] = self.build(value_node, child, depth + 1)
        # Merged keys fill in what the mapping does not say itself; among several merged
        # mappings the earlier one wins (YAML merge-key semantics).
        for key_node, value_node in merged:
            key = self._key(key_node)
            if key in out:
                continue
            child = join_path(path, key)
            self.key_marks[child] = key_node
            out[key] = self.build(value_node, child, depth + 1)
        return out


_ALIAS_PROBLEM = re.compile(r"alias|anchor", re.IGNORECASE)


def _yaml_error(file: str, exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else 1
    column = mark.column + 1 if mark else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    if _ALIAS_PROBLEM.search(f"{problem} {context}") and "*" in source:
        message = (
            "a value starting with `*` reads as a YAML alias; quote the cron expression, "
            'e.g. cron: "*/5 * * * *"'
        )
    elif "\t" in source[:column]:
        message = "tabs are not allowed for indentation in YAML; indent with spaces"
    return Problem(file, line, column, "", message)


def read_text(file: str, data: bytes) -> tuple[str | None, Problem | None]:
    """Decode a file's bytes as UTF-8 within the size limit, or say why not."""
    if len(data) > MAX_FILE_BYTES:
        return None, Problem(file, 1, 1, "", "file is larger than the 1 MiB limit; split it up")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, Problem(file, line, column, "", "file is not valid UTF-8; save it as UTF-8")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        return None, Problem(file, line, 1, "", "file contains a NUL byte; is it a text file?")
    return text.removeprefix("\ufeff"), None


def load_documents(file: str, data: bytes) -> tuple[list[Document], list[Problem]]:
    """Parse every YAML document in `data`. Returns the documents and the problems found.

    A problem in the YAML syntax stops the file (nothing after it can be trusted); duplicate keys
    are reported and the rest of the file is still read.
    """
    text, problem = read_text(file, data)
    if problem is not None or text is None:
        return [], [problem] if problem else []
    loader = _Loader(text) if _shallow(text) else _PyLoader(text)
    documents: list[Document] = []
    problems: list[Problem] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            builder = _Builder(loader)
            try:
                value = builder.build(node, "", 0)
            except _TooBig as exc:
                mark = exc.node.start_mark
                problems.append(Problem(file, mark.line + 1, mark.column + 1, "", str(exc)))
                return documents, problems
            for bad_node, path, message in builder.problems:
                mark = bad_node.start_mark
                problems.append(Problem(file, mark.line + 1, mark.column + 1, path, message))
            documents.append(Document(value, builder.marks, builder.key_marks, builder.plain))
    except yaml.YAMLError as exc:
        problems.append(_yaml_error(file, exc, text))
    except RecursionError:
        problems.append(Problem(file, 1, 1, "", f"nesting deeper than {MAX_DEPTH} levels"))
    finally:
        loader.dispose()
    return documents, problems
