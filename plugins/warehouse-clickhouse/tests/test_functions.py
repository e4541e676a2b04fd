"""The functions a read-only query may call: the engine's, as reviewed, less those that reach
outside the warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signalsmith_warehouse_clickhouse.functions import REACHING_OUT, refusal, reviewed


@pytest.fixture(scope="module")
def engine(chdb_dir: Path) -> Iterator[Any]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    yield client
    client.close()


def test_every_function_of_the_engine_has_been_reviewed(engine: Any) -> None:
    """Fails after a chDB upgrade that brings functions: review them (see functions.py)."""
    names = {
        name
        for (name,) in engine.query(
            "SELECT name FROM system.functions WHERE origin = 'System'"
        ).result_rows
    }
    unreviewed = sorted(names - set(reviewed().exact))
    assert not unreviewed, (
        f"functions the engine has that no one reviewed: {unreviewed}. Add those that read "
        "files, make requests, read other databases or write to REACHING_OUT in functions.py, "
        "then run `python -m signalsmith_warehouse_clickhouse.functions` into "
        "reviewed_functions.tsv"
    )


def test_every_function_refused_for_reaching_out_is_one_of_the_engines() -> None:
    assert set(REACHING_OUT) <= set(reviewed().exact)


def test_aliases_of_a_function_that_reaches_out_are_refused_too() -> None:
    aliases = [f.name for f in reviewed().exact.values() if f.alias_to in REACHING_OUT]
    assert "AIGenerate" in aliases
    for name in aliases:
        assert refusal(name) is not None, name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("file", "reads a file"),
        ("dictGetString", "reads a dictionary"),
        ("dictHas", "reads a dictionary"),
        ("joinGet", "Join table"),
        ("hasColumnInTable", "other databases"),
        ("aiEmbed", "AI provider"),
        ("regionToName", "geobase"),
        ("showCertificate", "certificate"),
        ("addressToSymbol", "debug information"),
        ("generateSerialID", "Keeper"),
        ("logTrace", "server's log"),
        ("FILE", "not a function"),
        ("countIff", "not a function"),
        ("fileIf", "not a function"),
        ("__getScalar", "internal"),
    ],
)
def test_functions_that_reach_outside_or_are_unknown_are_refused(name: str, says: str) -> None:
    reason = refusal(name)
    assert reason is not None and says in reason


@pytest.mark.parametrize(
    "name",
    [
        "count",
        "COUNT",
        "sum",
        "countIf",
        "countDistinct",
        "uniqMergeState",
        "sumArrayIfOrNull",
        "quantileExactIf",
        "toString",
        "JSONExtractString",
        "row_number",
        "DATE_FORMAT",
        "sleepEachRow",
        "lambda",
        "exists",
    ],
)
def test_ordinary_functions_are_allowed(name: str) -> None:
    assert refusal(name) is None
