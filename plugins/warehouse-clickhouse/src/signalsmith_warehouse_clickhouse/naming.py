"""Table and column names: Segment's go-snakecase rules, made safe for any name a client sends.

Segment converts table and column names to snake_case with go-snakecase (the reference, section
6): non-alphanumerics separate words and runs of them collapse, leading and trailing junk is
dropped, a run of capitals stays one word, and non-ASCII characters are dropped. Clients can
send anything as an event name, so on top of those rules a name that snake-cases to nothing, to
one of the fixed tables, or past a length cap gets a short stable hash of the original name.
"""

from __future__ import annotations

import hashlib

# The tables every message type lands in, plus the ones this plugin keeps for itself; a track
# event name that snake-cases to one of these gets a hashed table of its own instead.
FIXED_TABLES = frozenset(
    {"tracks", "identifies", "users", "pages", "screens", "groups", "accounts", "aliases"}
)
DISCARDS_TABLE = "discards"
EVENT_TABLES_TABLE = "_event_tables"
# Events a contract found fault with (blocked ones too), from the core's violations stream.
VIOLATIONS_TABLE = "violations"
RESERVED_TABLES = FIXED_TABLES | {DISCARDS_TABLE, EVENT_TABLES_TABLE, VIOLATIONS_TABLE}

# Long enough for any readable event name; what is cut off is replaced by a hash, so two long
# names that share a prefix still get two tables.
MAX_TABLE_NAME = 64
# ClickHouse stores a column as files named after it; file names stop at 255 bytes.
MAX_COLUMN_NAME = 120
HASH_LENGTH = 8


def _lower_or_digit(char: str) -> bool:
    return "a" <= char <= "z" or "0" <= char <= "9"


def _upper_or_digit(char: str) -> bool:
    return "A" <= char <= "Z" or "0" <= char <= "9"


def _alphanumeric(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z" or "0" <= char <= "9"


def snakecase(text: str) -> str:
    """``text`` in snake_case by go-snakecase's rules (ASCII letters and digits only).

    ``"Order Completed"`` -> ``order_completed``, ``"SAMPLE 2 TEXT"`` -> ``sample_2_text``,
    ``"Base64Encode"`` -> ``base64_encode``, ``"something.com"`` -> ``something_com``,
    ``"$something%"`` -> ``something``, ``"日本"`` -> ``""``.
    """
    length = len(text)
    index = 0
    # A prefix that is already snake_case is kept as it is, underscores included (go-snakecase
    # does the same, which is why "_private" stays "_private" but "__private" becomes
    # "private").
    while index < length and (
        _lower_or_digit(text[index])
        or (text[index] == "_" and index + 1 < length and _lower_or_digit(text[index + 1]))
    ):
        index += 1
    if index == length:
        return text
    # A digit right before a capital starts the next word with it ("sample2Text" -> sample_2text).
    if index > 0 and "0" <= text[index - 1] <= "9":
        index -= 1
    out = list(text[:index])
    while index < length:
        if not _alphanumeric(text[index]):
            index += 1
            continue
        if out:
            out.append("_")
        while index < length and _upper_or_digit(text[index]):
            out.append(text[index].lower())
            index += 1
        while index < length and _lower_or_digit(text[index]):
            out.append(text[index])
            index += 1
    return "".join(out)


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    """A stable hex digest of ``text`` (the same in every process and release)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _with_hash(base: str, original: str, limit: int, length: int = HASH_LENGTH) -> str:
    keep = limit - length - 1
    base = base[:keep].rstrip("_")
    return f"{base}_{short_hash(original, length)}" if base else short_hash(original, length)


def event_table_candidates(event_text: str) -> list[str]:
    """The table names an event name may get, most readable first.

    The first is the name it gets unless a different event name already holds it (two names can
    snake-case alike: "Order Completed" and "order_completed"); the next ones add ever longer
    hashes of the original name, so they are taken only by that name.
    """
    slug = snakecase(event_text)
    if not slug:
        # Nothing ASCII to keep (an all-unicode or all-punctuation name).
        slug = f"event_{short_hash(event_text)}"
    elif slug in RESERVED_TABLES or slug.startswith("_"):
        # "Identifies" must not land in `identifies`; names starting with "_" are ours.
        slug = f"{slug.lstrip('_') or 'event'}_{short_hash(event_text)}"
    elif len(slug) > MAX_TABLE_NAME:
        slug = _with_hash(slug, event_text, MAX_TABLE_NAME)
    base = slug[: MAX_TABLE_NAME - 2 * HASH_LENGTH - 1].rstrip("_") or "event"
    return [
        slug,
        f"{base}_{short_hash(event_text)}",
        f"{base}_{short_hash(event_text, 2 * HASH_LENGTH)}",
        f"event_{short_hash(event_text, 40)}",
    ]


def column_name(path: tuple[str, ...], prefix: str = "") -> str:
    """The column for a (nested) key path: ``("address", "streetName")`` -> ``address_street_name``.

    ``prefix`` is ``"context_"`` for context fields. A path with nothing ASCII in it gets a
    hashed name (``column_1a2b3c4d``) so its value is still kept; a very long one is cut and
    hashed.
    """
    body = snakecase("_".join(path))
    if not body:
        body = f"column_{short_hash(chr(31).join(path))}"
    name = prefix + body
    if len(name) > MAX_COLUMN_NAME:
        name = _with_hash(name, chr(31).join(path), MAX_COLUMN_NAME)
    return name


def quote(identifier: str) -> str:
    """A ClickHouse identifier in backticks, safe whatever it contains."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"
