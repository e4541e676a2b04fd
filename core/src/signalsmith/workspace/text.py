"""Reading a workspace document's text: YAML (or JSON) into plain values, with where each is.

YAML is read with PyYAML's composer and a resolver of our own, so values mean what YAML 1.2's
core schema (and JSON) says they mean: ``on``, ``no`` and ``yes`` are strings, not booleans, and
``2024-01-01`` is a string, not a date. Anchors, aliases and merge keys (``<<: *defaults``) work;
a tag other than the core schema's (``!include``, ``!!python/object``) is refused. A key written
twice in one mapping is an error, not a silent overwrite.

A mapping ``{$include: path/to/file.yaml}`` anywhere is replaced by that file's content, read
relative to the main document. Included files are kept with the version, so every process reads
the same content without needing the files.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

INCLUDE_KEY = "$include"
# Past these a document is refused rather than expanded (alias bombs, runaway nesting).
MAX_VALUES = 200_000
MAX_DEPTH = 64
MAX_INCLUDES = 100

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_KNOWN_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ, _MERGE}


class Where(msgspec.Struct, frozen=True):
    """Where a value is written: the file (None for the main document) and the 1-based line."""

    line: int
    file: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}" if self.file is None else f"{self.file} line {self.line}"


class TextError(msgspec.Struct, frozen=True):
    """A document that cannot be read at all (not YAML, a duplicate key, a refused tag)."""

    message: str
    where: Where | None = None
    path: Path = ()


class DocumentText(msgspec.Struct, frozen=True, kw_only=True):
    """A document as written: its text, and the text of every file it includes, by path."""

    text: str
    files: dict[str, str] = {}
    # "yaml" or "json"; JSON is read as the YAML subset it is (tabs between tokens allowed).
    format: str = "yaml"


class ReadDocument(msgspec.Struct, frozen=True, kw_only=True):
    """The plain value of a document, where each part of it is written, and what it included."""

    value: Any
    marks: dict[Path, Where]
    files: dict[str, str]

    def where(self, path: Path) -> Where | None:
        """Where the value at ``path`` is written, or its closest written parent."""
        for end in range(len(path), -1, -1):
            found = self.marks.get(path[:end])
            if found is not None:
                return found
        return None


class Unreadable(Exception):
    """Raised with every ``TextError`` found; nothing of the document is usable."""

    def __init__(self, errors: list[TextError]) -> None:
        super().__init__("; ".join(error.message for error in errors))
        self.errors = errors


# --- YAML 1.2 core schema resolution --------------------------------------------------------------


class _CoreResolver(BaseResolver):
    """Plain scalars resolved as YAML 1.2's core schema says (and JSON agrees)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # PyYAML keeps resolvers per class


_CoreResolver.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreResolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_CoreResolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_CoreResolver.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])


class _Composer(Reader, Scanner, Parser, Composer, _CoreResolver):
    """PyYAML's reading stages up to nodes; values are built by ``_Builder``, not PyYAML."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CoreResolver.__init__(self)


class _NotText(ValueError):
    """A string holding a UTF-16 surrogate that is not half of a pair: no text can hold it."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(text: str) -> str:
    """``text`` with escaped surrogate pairs (``\\ud83d\\ude00``, as JSON writes characters past
    U+FFFF) made the one character they stand for; a surrogate left alone is refused."""
    if _SURROGATE.search(text) is None:
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if "\ufffd" in joined and "\ufffd" not in text:
        raise _NotText(text)
    return joined


def _scalar(node: ScalarNode) -> Any:
    text = node.value
    tag = node.tag
    if tag == _STR:
        return _text(text)
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return text.lower() == "true"
    if tag == _INT:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


def _where(node: Node, file: str | None) -> Where:
    return Where(line=node.start_mark.line + 1, file=file)


class _Failure(Exception):
    def __init__(self, error: TextError) -> None:
        super().__init__(error.message)
        self.error = error


class _Builder:
    """Builds plain values from YAML nodes, recording where each is, expanding includes."""

    def __init__(
        self, read_include: Callable[[str, Where, Path, list[str]], tuple[Node, str]]
    ) -> None:
        self.marks: dict[Path, Where] = {}
        self.read_include = read_include
        self.count = 0
        # The included files being built, outermost first (an include cycle is an error).
        self.including: list[str] = []

    def fail(self, message: str, where: Where, path: Path) -> _Failure:
        return _Failure(TextError(message=message, where=where, path=path))

    def build(self, node: Node, path: Path, file: str | None, active: tuple[int, ...]) -> Any:
        where = _where(node, file)
        self.marks.setdefault(path, where)
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.fail(
                f"the document holds more than {MAX_VALUES} values once aliases are expanded",
                where,
                path,
            )
        if len(active) > MAX_DEPTH:
            raise self.fail(f"values are nested more than {MAX_DEPTH} levels deep", where, path)
        if id(node) in active:
            raise self.fail("an alias refers to a value that contains it", where, path)
        if node.tag not in _KNOWN_TAGS:
            raise self.fail(
                f"tag {node.tag!r} is not supported: the workspace holds plain strings, "
                "numbers, booleans, null, lists and mappings",
                where,
                path,
            )
        inner = (*active, id(node))
        if isinstance(node, ScalarNode):
            if node.tag in (_MAP, _SEQ, _MERGE):
                raise self.fail(f"tag {node.tag!r} cannot be a plain value", where, path)
            try:
                return _scalar(node)
            except _NotText:
                raise self.fail(
                    "the text holds a lone UTF-16 surrogate (an escape such as \\ud800 that is "
                    "not half of a pair), which no text can hold",
                    where,
                    path,
                ) from None
            except ValueError:
                raise self.fail(f"{node.value!r} is not a valid {node.tag}", where, path) from None
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(f"tag {node.tag!r} cannot tag a list", where, path)
            return [
                self.build(item, (*path, index), file, inner)
                for index, item in enumerate(node.value)
            ]
        assert isinstance(node, MappingNode)
        if node.tag != _MAP:
            raise self.fail(f"tag {node.tag!r} cannot tag a mapping", where, path)
        return self.mapping(node, path, file, inner)

    def mapping(
        self, node: MappingNode, path: Path, file: str | None, active: tuple[int, ...]
    ) -> Any:
        merged: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_where = _where(key_node, file)
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                for source in self._merge_sources(value_node, path, file):
                    merged.update(self.build(source, path, file, active))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (
                _STR,
                _INT,
                _FLOAT,
                _BOOL,
                _NULL,
            ):
                raise self.fail(
                    "a key must be a plain name, not a list or mapping", key_where, path
                )
            key = key_node.value  # as written: `1:` is the key "1", `on:` the key "on"
            if key in own:
                raise self.fail(
                    f"key {key!r} is written twice in this mapping (first on "
                    f"{self.marks[(*path, key)]})",
                    key_where,
                    (*path, key),
                )
            self.marks[(*path, key)] = key_where
            own[key] = self.build(value_node, (*path, key), file, active)
        if INCLUDE_KEY in own:
            if len(own) != 1 or merged:
                raise self.fail(
                    f"{INCLUDE_KEY} replaces the whole mapping it is in: write it alone",
                    _where(node, file),
                    path,
                )
            target = own[INCLUDE_KEY]
            if not isinstance(target, str):
                raise self.fail(
                    f"{INCLUDE_KEY} takes a relative file path", _where(node, file), path
                )
            included, included_file = self.read_include(
                target, _where(node, file), path, self.including
            )
            self.including.append(included_file)
            try:
                return self.build(included, path, included_file, active)
            finally:
                self.including.pop()
        return {**merged, **own}

    def _merge_sources(self, node: Node, path: Path, file: str | None) -> list[Node]:
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(
            isinstance(item, MappingNode) for item in node.value
        ):
            return list(node.value)
        raise self.fail("<< merges a mapping or a list of mappings", _where(node, file), path)


def _compose(text: str, file: str | None, format: str) -> Node | None:
    if format == "json":
        # JSON allows no raw tab inside a string, so every tab is whitespace between tokens,
        # which YAML's scanner does not accept everywhere: as spaces, lines stay where they are.
        text = text.replace("\t", " ")
    try:
        return _Composer(text).get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = Where(line=mark.line + 1, file=file) if mark is not None else None
        problem = error.problem or error.context or "not valid YAML"
        raise _Failure(
            TextError(message=f"not valid {format.upper()}: {problem}", where=where)
        ) from None
    except yaml.YAMLError as error:
        raise _Failure(TextError(message=f"not valid {format.upper()}: {error}")) from None
    except RecursionError:
        raise _Failure(TextError(message="values are nested too deeply")) from None


def _include_path(target: str) -> str | None:
    """The normalised relative path of an include, or None when it leaves the directory."""
    if not target or target.startswith(("/", "\\")) or ":" in target.split("/")[0]:
        return None
    normal = posixpath.normpath(target.replace("\\", "/"))
    if normal.startswith("../") or normal == ".." or normal == ".":
        return None
    return normal


def read_document(
    document: DocumentText, *, read_file: Callable[[str], str] | None = None
) -> ReadDocument:
    """The plain value of ``document``, or ``Unreadable``.

    Included files are taken from ``document.files`` (a stored version) or, when
    ``read_file`` is given, read with it (``config apply FILE``: relative to the file's
    directory); ``ReadDocument.files`` holds the text of every file included.
    """
    files: dict[str, str] = {}

    def read_include(target: str, where: Where, path: Path, stack: list[str]) -> tuple[Node, str]:
        relative = _include_path(target)
        if relative is None:
            raise _Failure(
                TextError(
                    message=f"{INCLUDE_KEY} {target!r}: give a path relative to the document's "
                    "directory, inside it",
                    where=where,
                    path=path,
                )
            )
        if relative in stack:
            cycle = " -> ".join([*stack, relative])
            raise _Failure(
                TextError(message=f"{INCLUDE_KEY} cycle: {cycle}", where=where, path=path)
            )
        if relative not in files and len(files) >= MAX_INCLUDES:
            raise _Failure(
                TextError(
                    message=f"more than {MAX_INCLUDES} included files", where=where, path=path
                )
            )
        text = files.get(relative)
        if text is None:
            text = document.files.get(relative)
            if text is None and read_file is not None:
                try:
                    text = read_file(relative)
                except (OSError, UnicodeDecodeError) as error:
                    raise _Failure(
                        TextError(
                            message=f"{INCLUDE_KEY} {relative!r} cannot be read: {error}",
                            where=where,
                            path=path,
                        )
                    ) from None
            if text is None:
                raise _Failure(
                    TextError(
                        message=f"{INCLUDE_KEY} {relative!r}: no such file in this version",
                        where=where,
                        path=path,
                    )
                )
            files[relative] = text
        node = _compose(text, relative, "json" if relative.endswith(".json") else "yaml")
        if node is None:
            raise _Failure(
                TextError(message=f"{INCLUDE_KEY} {relative!r} is empty", where=where, path=path)
            )
        return node, relative

    builder = _Builder(read_include)
    try:
        root = _compose(document.text, None, document.format)
        value = None if root is None else builder.build(root, (), None, ())
    except _Failure as failure:
        raise Unreadable([failure.error]) from None
    except RecursionError:
        raise Unreadable([TextError(message="values are nested too deeply")]) from None
    return ReadDocument(value=value, marks=builder.marks, files=files)


def format_of(name: str, text: str) -> str:
    """``"json"`` for a ``.json`` name (or, without a name, a text that starts with ``{``)."""
    if name:
        return "json" if name.lower().endswith(".json") else "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def render_path(path: Path) -> str:
    """``("sources", "web", "transforms", 2)`` as ``sources.web.transforms[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(value: Any, limit: int = 60) -> str:
    """A short, quoted rendering of a written value for error messages."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[: limit - 3] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
