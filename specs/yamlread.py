"""YAML text -> plain Python data plus a tree of source positions.

We build the data straight from ruamel.yaml's parser events rather than loading
CommentedMaps, because events give us what construction loses: the position of
every key *and* value, every duplicate key (ruamel's constructor stops at the
first), and the source text of plain scalars (``base: 20240101_120000`` is an int
to YAML 1.2, a version name to us). It is also fast and lean: no comment handling,
so ruamel's C parser (ruamel.yaml.clib) is used when installed, and no node graph
or CommentedMap is ever held, only the data and a compact position tree. Plain
scalars are typed by the YAML 1.2 core schema, here, not by ruamel's resolver.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from specs.diagnostics import SpecPath

_T = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT, _TIMESTAMP = (_T + t for t in ("str", "null", "bool", "int", "float", "timestamp"))
_MAP, _SEQ = _T + "map", _T + "seq"


MAX_NODES = 2_000_000


class PlainInt(int):
    """An int read from a plain scalar; ``source`` keeps its text for fields that want a string."""

    source: str


class PlainFloat(float):
    """A float read from a plain scalar; ``source`` keeps its text for fields that want a string."""

    source: str


def plain_text(value: Any) -> Any:
    """Give a string field the text the user wrote (``007``, ``20240101_120000``), not YAML's number."""
    if isinstance(value, PlainInt | PlainFloat):
        return value.source
    return value


class PosNode:
    """Where one node sits: its value, and the key naming it (0 when it has none)."""

    __slots__ = ("line", "col", "key_line", "key_col", "children")

    def __init__(self, line: int, col: int, key_line: int, key_col: int, children: Any = None):
        self.line, self.col, self.key_line, self.key_col = line, col, key_line, key_col
        self.children: dict[str, PosNode] | list[PosNode] | None = children

    @property
    def anchor(self) -> tuple[int, int]:
        """The best single place to point at: a scalar's value, a collection's key."""
        if self.children is not None and self.key_line:
            return self.key_line, self.key_col
        return self.line, self.col


class Positions:
    """Maps spec paths to 1-based (line, col), falling back to the nearest existing ancestor."""

    def __init__(self, root: PosNode | None):
        self._root = root

    def _walk(self, path: SpecPath) -> tuple[PosNode | None, bool]:
        node = self._root
        if node is None:
            return None, False
        for part in path:
            children = node.children
            found = (isinstance(children, dict) and isinstance(part, str) and part in children) or (
                isinstance(children, list) and isinstance(part, int) and 0 <= part < len(children)
            )
            if not found:
                return node, False
            node = children[part]  # type: ignore[index]
        return node, True

    def locate(self, path: SpecPath) -> tuple[int, int]:
        node, _ = self._walk(path)
        return node.anchor if node is not None else (0, 0)

    def locate_key(self, path: SpecPath) -> tuple[int, int]:
        """The key itself (for unknown keys); the node's anchor when it has no key."""
        node, exact = self._walk(path)
        if node is None:
            return 0, 0
        if exact and node.key_line:
            return node.key_line, node.key_col
        return node.anchor

    def locate_value(self, path: SpecPath) -> tuple[int, int]:
        """The value itself (for bad values); the nearest ancestor's anchor when it is absent."""
        node, exact = self._walk(path)
        if node is None:
            return 0, 0
        return (node.line, node.col) if exact else node.anchor


@dataclass(frozen=True)
class Problem:
    """Something wrong found while reading, before any schema applies."""

    line: int
    col: int
    path: SpecPath
    message: str
    replaces_value: bool = True  # the value at `path` is a stand-in: say nothing more about it


class YamlSyntaxError(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


def read_yaml(text: str) -> tuple[Any, PosNode | None, list[Problem]]:
    """Parse ``text``. Returns (data, positions, problems); raises YamlSyntaxError when it is not YAML."""
    builder = _Builder(iter(YAML(typ="safe").parse(text)))  # C parser when ruamel.yaml.clib is installed
    try:
        data, pos = builder.document()
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        what = exc.problem or exc.context or "cannot parse"
        context_mark = exc.context_mark
        if exc.problem and exc.context and context_mark is not None and context_mark.line + 1 != line:
            what = f"{what} ({exc.context} at line {context_mark.line + 1})"
        raise YamlSyntaxError(Problem(line, col, (), f"invalid YAML: {what}")) from None
    except YAMLError as exc:  # reader errors (bad characters) carry an offset, not a mark
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot parse"
        offset = getattr(exc, "position", None)
        line, col = (0, 0)
        if isinstance(offset, int) and 0 <= offset <= len(text):
            line, col = text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1
        character = getattr(exc, "character", None)
        if isinstance(character, int | str) and character != "":
            code = character if isinstance(character, int) else ord(character[0])
            first = f"character #x{code:04x} is not allowed in YAML"
        raise YamlSyntaxError(Problem(line, col, (), f"invalid YAML: {first}")) from None
    except RecursionError:
        raise YamlSyntaxError(Problem(0, 0, (), "invalid YAML: nested too deeply")) from None
    return data, pos, builder.problems


# A value as built: its data, its positions, and how many values it holds (for the alias budget).
_Built = tuple[Any, PosNode, int]


class _Builder:
    """Builds data and positions straight from parser events: no node graph is ever held."""

    def __init__(self, events: Iterator[Any]):
        self._events = events
        self.problems: list[Problem] = []
        self._anchors: dict[str, _Built] = {}
        self._open: set[str] = set()  # anchors still being built: an alias to one is a cycle
        self._budget = MAX_NODES  # aliases can multiply a small file into a huge tree ("billion laughs")

    def document(self) -> tuple[Any, PosNode | None]:
        self._expect(StreamStartEvent)
        ev = next(self._events)
        if isinstance(ev, StreamEndEvent):
            return None, None
        if not isinstance(ev, DocumentStartEvent):
            raise YAMLError("expected a document")
        data, pos, _ = self._value(next(self._events), (), 0, 0)
        self._expect(DocumentEndEvent)
        ev = next(self._events)
        if isinstance(ev, DocumentStartEvent):
            line, col = _mark(ev)
            raise YamlSyntaxError(Problem(line, col, (), "a spec is one YAML document, but a second one starts here"))
        if not isinstance(ev, StreamEndEvent):
            raise YAMLError("expected the end of the stream")
        if data is None and pos.children is None:
            return None, None  # only comments, or an empty document
        return data, pos

    def _expect(self, kind: type) -> None:
        ev = next(self._events)
        if not isinstance(ev, kind):
            raise YAMLError(f"unexpected {type(ev).__name__}")

    def _problem(self, line: int, col: int, path: SpecPath, message: str, *, replaces_value: bool = True) -> None:
        self.problems.append(Problem(line, col, path, message, replaces_value))

    def _spend(self, n: int, line: int, col: int, path: SpecPath) -> None:
        self._budget -= n
        if self._budget < 0:
            message = f"more than {MAX_NODES:,} values once aliases are expanded"
            raise YamlSyntaxError(Problem(line, col, path, message))

    def _value(self, ev: Any, path: SpecPath, key_line: int, key_col: int) -> _Built:
        line, col = _mark(ev)
        if isinstance(ev, AliasEvent):
            return self._alias(ev, path, line, col, key_line, key_col)
        self._spend(1, line, col, path)
        anchor = ev.anchor
        if anchor is not None:
            self._open.add(anchor)
        if isinstance(ev, ScalarEvent):
            if key_line and ev.value == "" and not ev.style and ev.tag is None:
                line, col = key_line, key_col  # an empty value (`key:`) sits at its key
            built: _Built = (self._scalar(ev, path, line, col), PosNode(line, col, key_line, key_col), 1)
        elif isinstance(ev, SequenceStartEvent):
            self._check_tag(ev, _SEQ, path, line, col)
            built = self._sequence(path, line, col, key_line, key_col)
        elif isinstance(ev, MappingStartEvent):
            self._check_tag(ev, _MAP, path, line, col)
            built = self._mapping(path, line, col, key_line, key_col)
        else:
            raise YAMLError(f"unexpected {type(ev).__name__}")
        if anchor is not None:
            self._open.discard(anchor)
            self._anchors[anchor] = built
        return built

    def _alias(self, ev: Any, path: SpecPath, line: int, col: int, key_line: int, key_col: int) -> _Built:
        found = self._anchors.get(ev.anchor)
        if found is None:
            if ev.anchor in self._open:
                self._problem(line, col, path, f"alias *{ev.anchor} refers to a node that contains it (a cycle)")
            else:
                self._problem(line, col, path, f"alias *{ev.anchor} names no anchor defined before it")
            return None, PosNode(line, col, key_line, key_col), 1
        data, pos, size = found
        self._spend(size, line, col, path)
        if pos.children is None:  # a scalar: point at the alias, where the reader looks
            return data, PosNode(line, col, key_line, key_col), size
        return data, PosNode(pos.line, pos.col, key_line, key_col, pos.children), size

    def _check_tag(self, ev: Any, standard: str, path: SpecPath, line: int, col: int) -> None:
        if ev.tag not in (None, "!", standard):
            self._problem(line, col, path, f"unsupported YAML tag {ev.tag}")

    def _sequence(self, path: SpecPath, line: int, col: int, key_line: int, key_col: int) -> _Built:
        items: list[Any] = []
        positions: list[PosNode] = []
        size = 1
        for ev in self._events:
            if isinstance(ev, SequenceEndEvent):
                break
            value, pos, n = self._value(ev, (*path, len(items)), 0, 0)
            items.append(value)
            positions.append(pos)
            size += n
        return items, PosNode(line, col, key_line, key_col, positions), size

    def _mapping(self, path: SpecPath, line: int, col: int, key_line: int, key_col: int) -> _Built:
        data: dict[str, Any] = {}
        children: dict[str, PosNode] = {}
        merges: list[_Built] = []
        size = 1
        for ev in self._events:
            if isinstance(ev, MappingEndEvent):
                break
            kl, kc = _mark(ev)
            if not isinstance(ev, ScalarEvent):
                self._value(ev, path, 0, 0)  # consume the key's events
                self._value(next(self._events), path, 0, 0)  # and its value's
                message = "a key must be plain text, not a list, mapping or alias"
                self._problem(kl, kc, path, message, replaces_value=False)
                continue
            key = ev.value
            if key == "<<" and not ev.style and ev.tag is None:
                merges.append(self._value(next(self._events), path, 0, 0))
                continue
            value, pos, n = self._value(next(self._events), (*path, key), kl, kc)
            if key in children:
                message = f"duplicate key '{key}' (first at line {children[key].key_line})"
                self._problem(kl, kc, (*path, key), message, replaces_value=False)
                continue
            data[key], children[key] = value, pos
            size += n
        for merged, pos, n in merges:
            sources = zip(merged, pos.children, strict=True) if isinstance(merged, list) else [(merged, pos)]
            for source, source_pos in sources:  # earlier sources win, keys written here win over all
                if not isinstance(source, dict) or not isinstance(source_pos.children, dict):
                    message = "a merge key (<<) takes a mapping or a list of mappings"
                    self._problem(source_pos.line, source_pos.col, path, message, replaces_value=False)
                    continue
                for key, value in source.items():
                    if key not in data:
                        data[key], children[key] = value, source_pos.children[key]
            size += n
        return data, PosNode(line, col, key_line, key_col, children), size

    def _scalar(self, ev: Any, path: SpecPath, line: int, col: int) -> Any:
        text: str = ev.value
        tag = ev.tag
        if tag is None or tag == "!":
            return resolve_plain(text) if not ev.style and tag is None else text
        if tag in (_STR, _TIMESTAMP):
            return text
        explicit = resolve_plain(text)
        expected = {_NULL: type(None), _BOOL: bool, _INT: PlainInt, _FLOAT: (PlainFloat, PlainInt)}.get(tag)
        if expected is None:
            self._problem(line, col, path, f"unsupported YAML tag {tag}")
            return text
        if not isinstance(explicit, expected):  # type: ignore[arg-type]
            self._problem(line, col, path, f"'{text}' is not a valid {tag.removeprefix(_T)}")
            return text
        return _plain(PlainFloat, float, text) if tag == _FLOAT else explicit


def _mark(ev: Any) -> tuple[int, int]:
    return ev.start_mark.line + 1, ev.start_mark.column + 1


# YAML 1.2 core schema for plain scalars (plus the digit separators ruamel also accepts: 1_000).
_NULL_RE = re.compile(r"~|null|Null|NULL|")
_BOOL_RE = re.compile(r"true|True|TRUE|false|False|FALSE")
_INT_RE = re.compile(r"[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_MAYBE_TYPED = frozenset("0123456789+-.~nNtTfF")


def resolve_plain(text: str) -> Any:
    """A plain (unquoted) scalar's value: None, a bool, a PlainInt/PlainFloat, or the text itself."""
    if text and text[0] not in _MAYBE_TYPED:
        return text
    if _NULL_RE.fullmatch(text):
        return None
    if _BOOL_RE.fullmatch(text):
        return text[0] in "tT"
    if _INT_RE.fullmatch(text):
        return _plain(PlainInt, _parse_int, text)
    if _FLOAT_RE.fullmatch(text):
        return _plain(PlainFloat, _parse_float, text)
    return text


def _plain(cls: type, parse: Any, text: str) -> Any:
    try:
        value = cls(parse(text))
    except ValueError:
        return text
    value.source = text
    return value


def _parse_int(text: str) -> int:
    s = text.replace("_", "")
    if s[:2] in ("0o", "0x"):
        return int(s, 0)
    return int(s, 10)


def _parse_float(text: str) -> float:
    s = text.replace("_", "").lower()
    if s.lstrip("+-") == ".inf":
        return -math.inf if s.startswith("-") else math.inf
    if s == ".nan":
        return math.nan
    return float(s)
