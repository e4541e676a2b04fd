"""Which ClickHouse functions a read-only query may call.

The default is refusal: a function runs only if it is on ``reviewed_functions.tsv`` (every
function of the engine this release was checked against, read from its ``system.functions``)
and not in ``REACHING_OUT`` (those that read files, make requests, read other databases or
write somewhere). A function the list does not know, from a newer engine, a user-defined one
(SQL, executable, chDB's Python UDFs) or a misspelling, is refused.

After upgrading chDB, `tests/test_functions.py` names the engine's new functions; review each,
add those that reach outside to ``REACHING_OUT``, then write the list again::

    python -m signalsmith_warehouse_clickhouse.functions > \\
        plugins/warehouse-clickhouse/src/signalsmith_warehouse_clickhouse/reviewed_functions.tsv
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

REVIEWED_FILE = "reviewed_functions.tsv"

# Functions that reach outside the warehouse, with why; aliases of these are refused too.
_DICTIONARY = "it reads a dictionary, which may load from files, URLs, other servers or databases"
REACHING_OUT: dict[str, str] = {
    "file": "it reads a file on the server",
    **{
        name: "it sends data to an AI provider over the network"
        for name in (
            "aiClassify",
            "aiEmbed",
            "aiExtract",
            "aiFilter",
            "aiGenerate",
            "aiRedact",
            "aiSimilarity",
            "aiTranslate",
        )
    },
    **{
        name: _DICTIONARY
        for name in (
            "dictGet",
            "dictGetAll",
            "dictGetChildren",
            "dictGetDate",
            "dictGetDateOrDefault",
            "dictGetDateTime",
            "dictGetDateTimeOrDefault",
            "dictGetDescendants",
            "dictGetFloat32",
            "dictGetFloat32OrDefault",
            "dictGetFloat64",
            "dictGetFloat64OrDefault",
            "dictGetHierarchy",
            "dictGetIPv4",
            "dictGetIPv4OrDefault",
            "dictGetIPv6",
            "dictGetIPv6OrDefault",
            "dictGetInt16",
            "dictGetInt16OrDefault",
            "dictGetInt32",
            "dictGetInt32OrDefault",
            "dictGetInt64",
            "dictGetInt64OrDefault",
            "dictGetInt8",
            "dictGetInt8OrDefault",
            "dictGetKeys",
            "dictGetOrDefault",
            "dictGetOrNull",
            "dictGetRoot",
            "dictGetString",
            "dictGetStringOrDefault",
            "dictGetUInt16",
            "dictGetUInt16OrDefault",
            "dictGetUInt32",
            "dictGetUInt32OrDefault",
            "dictGetUInt64",
            "dictGetUInt64OrDefault",
            "dictGetUInt8",
            "dictGetUInt8OrDefault",
            "dictGetUUID",
            "dictGetUUIDOrDefault",
            "dictHas",
            "dictIsIn",
            "assignCentroid",
            "naiveBayesClassifier",
            "naiveBayesClassifierWithAllProbs",
            "naiveBayesClassifierWithProb",
        )
    },
    **{
        name: "it reads the server's geobase files (embedded dictionaries)"
        for name in (
            "regionHierarchy",
            "regionIn",
            "regionToArea",
            "regionToCity",
            "regionToContinent",
            "regionToCountry",
            "regionToDistrict",
            "regionToName",
            "regionToPopulation",
            "regionToTopContinent",
        )
    },
    "joinGet": "it reads a Join table of any database",
    "joinGetOrNull": "it reads a Join table of any database",
    "hasColumnInTable": "it looks into other databases and can connect to another server",
    "getMaxTableNameLengthForDatabase": "it looks into other databases",
    "generateSerialID": "it writes to ClickHouse Keeper",
    "logTrace": "it writes to the server's log",
    "showCertificate": "it reads the server's certificate files",
    "addressToLine": "it reads the server binary's debug information",
    "addressToLineWithInlines": "it reads the server binary's debug information",
    "addressToSymbol": "it reads the server binary's debug information",
    "demangle": "it is for reading the server binary's symbols",
    "fuzzQuery": "it is a testing tool of the engine",
}

# Names the parser gives syntax of its own; the engine resolves them itself.
SYNTAX_FUNCTIONS = frozenset({"lambda", "exists", "grouping", "untuple"})

# Suffixes that make an aggregate function of another (`countIf`, `uniqMergeState`), from
# system.aggregate_function_combinators; longest first, so `MergeState` is not read as `State`.
COMBINATORS = tuple(
    sorted(
        (
            "If", "Array", "Map", "Tuple", "SimpleState", "State", "Merge", "MergeState",
            "ForEach", "OrDefault", "OrNull", "Resample", "Distinct", "ArgMin", "ArgMax",
        ),
        key=len,
        reverse=True,
    )
)  # fmt: skip


class Function(NamedTuple):
    """One reviewed function, as the engine listed it."""

    name: str
    aggregate: bool
    case_insensitive: bool
    # The function this name stands for, if it is an alias ("" if not).
    alias_to: str


class Reviewed(NamedTuple):
    exact: dict[str, Function]
    # Lower-cased names of the case-insensitive functions.
    folded: dict[str, Function]


@functools.cache
def reviewed() -> Reviewed:
    text = resources.files(__package__).joinpath(REVIEWED_FILE).read_text("utf-8")
    exact: dict[str, Function] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, aggregate, case_insensitive, alias_to = line.split("\t")
        exact[name] = Function(name, aggregate == "1", case_insensitive == "1", alias_to)
    folded = {name.lower(): f for name, f in exact.items() if f.case_insensitive}
    return Reviewed(exact, folded)


def _lookup(name: str) -> Function | None:
    """``name`` as the engine resolves it: exactly, then case-insensitively, then as an
    aggregate function with combinators."""
    known = reviewed()
    found = known.exact.get(name) or known.folded.get(name.lower())
    if found is not None:
        return found
    for suffix in COMBINATORS:
        if name.endswith(suffix) and len(name) > len(suffix):
            nested = _lookup(name[: -len(suffix)])
            if nested is not None and nested.aggregate:
                return nested
    return None


def refusal(name: str) -> str | None:
    """Why a query may not call the function ``name``; None when it may."""
    if name in SYNTAX_FUNCTIONS:
        return None
    if name.startswith("__"):
        return f"{name}() is internal to the engine, not for queries"
    found = _lookup(name)
    if found is None:
        return (
            f"{name}() is not a function `signalsmith sql` knows: it runs the functions of "
            "ClickHouse as reviewed for this release (no user-defined functions); check the "
            "spelling"
        )
    for candidate in (found.name, found.alias_to):
        reason = REACHING_OUT.get(candidate)
        if reason is not None:
            return f"{name}() is not allowed here: {reason}"
    return None


def engine_functions_tsv(client: object) -> str:
    """The list as the engine behind ``client`` (a clickhouse-connect client) has it."""
    rows = client.query(  # type: ignore[attr-defined]
        "SELECT name, is_aggregate, case_insensitive, alias_to FROM system.functions "
        "WHERE origin = 'System' ORDER BY name"
    ).result_rows
    version = client.query("SELECT version()").result_rows[0][0]  # type: ignore[attr-defined]
    lines = [
        f"# system.functions of ClickHouse {version}: name, aggregate, case-insensitive, alias"
    ]
    lines += [f"{name}\t{int(agg)}\t{int(ci)}\t{alias}" for name, agg, ci, alias in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    import sys

    import clickhouse_connect

    sys.stdout.write(engine_functions_tsv(clickhouse_connect.get_client(dsn="chdb://:memory:")))
