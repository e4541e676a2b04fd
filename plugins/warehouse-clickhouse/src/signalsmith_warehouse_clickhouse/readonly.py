"""The check a query passes before `signalsmith sql` (and the admin API) runs it.

The engine enforces read-only on its own (the query session runs with ClickHouse's
``readonly`` setting), so this check is for what that setting does not cover and for clear
errors: one statement at a time (chDB runs every statement of ``a; b``, and only the last would
carry the settings), no ``INTO OUTFILE`` (allowed in read-only mode, but it writes a file where
the engine runs), and no ``FORMAT`` clause (the client reads ClickHouse's Native format).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")


class NotReadOnly(ValueError):
    """A query `signalsmith sql` will not run; the message says what to change."""


def _tokens(sql: str) -> Iterator[tuple[str, str, int]]:
    """``(kind, text, start)`` for each token outside comments; kind is word/string/symbol."""
    index, length = 0, len(sql)
    while index < length:
        char = sql[index]
        if char.isspace():
            index += 1
        elif sql.startswith("--", index) or char == "#":
            end = sql.find("\n", index)
            index = length if end < 0 else end + 1
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            if end < 0:
                raise NotReadOnly("unterminated /* comment")
            index = end + 2
        elif char in "'\"`":
            start, index = index, index + 1
            while True:
                if index >= length:
                    raise NotReadOnly(f"unterminated {char}quoted{char} text")
                if sql[index] == "\\":
                    index += 2
                elif sql[index] == char:
                    # A doubled quote stands for the quote itself.
                    if index + 1 < length and sql[index + 1] == char:
                        index += 2
                    else:
                        index += 1
                        break
                else:
                    index += 1
            yield ("string" if char == "'" else "word"), sql[start:index], start
        elif char.isalnum() or char == "_":
            start = index
            while index < length and (sql[index].isalnum() or sql[index] in "_$"):
                index += 1
            yield "word", sql[start:index], start
        else:
            yield "symbol", char, index
            index += 1


def read_only_query(sql: str) -> str:
    """``sql`` without trailing semicolons, if it is one read-only statement; else NotReadOnly."""
    tokens = list(_tokens(sql))
    while tokens and tokens[-1][1] == ";":
        tokens.pop()
    if not tokens:
        raise NotReadOnly("the query is empty: give a statement such as SELECT count() FROM tracks")
    if any(text == ";" for kind, text, _ in tokens if kind == "symbol"):
        raise NotReadOnly("one statement at a time: split the query at its ';' and run each")
    first = next((text for kind, text, _ in tokens if text != "("), "")
    if first.upper() not in READ_STATEMENTS:
        raise NotReadOnly(
            f"only read-only queries run here ({', '.join(READ_STATEMENTS)}), not {first!r}; "
            "the warehouse's tables are written by the worker alone"
        )
    words = [text.upper() for kind, text, _ in tokens if kind == "word"]
    if any(a == "INTO" and b == "OUTFILE" for a, b in itertools.pairwise(words)):
        raise NotReadOnly("INTO OUTFILE is not allowed: print the result with --format csv instead")
    if len(tokens) >= 2 and tokens[-2][1].upper() == "FORMAT" and tokens[-1][0] == "word":
        raise NotReadOnly(
            "leave out the FORMAT clause: `signalsmith sql --format table|json|csv` chooses "
            "the output"
        )
    _, last_text, last_start = tokens[-1]
    return sql[: last_start + len(last_text)].strip()
