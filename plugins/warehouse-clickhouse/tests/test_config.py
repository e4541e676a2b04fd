"""Settings: where the warehouse is, from SIGNALSMITH_WAREHOUSE_* (no connection is made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalsmith_warehouse_clickhouse import WarehouseConfig, WarehouseConfigError


def test_nothing_configured_means_chdb_in_the_data_directory(tmp_path: Path) -> None:
    target = WarehouseConfig.from_env({}).target(tmp_path / "data")
    assert target.kind == "chdb"
    assert target.path == (tmp_path / "data" / "warehouse").resolve()
    assert target.dsn == f"chdb://{target.path}"
    assert target.database == "signalsmith"


def test_a_relative_chdb_path_is_a_directory_not_a_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = WarehouseConfig.from_env({"SIGNALSMITH_WAREHOUSE_DSN": "chdb://wh/events"})
    assert config.target(tmp_path).path == (tmp_path / "wh" / "events").resolve()


def test_an_http_dsn_connects_to_default_and_never_shows_the_password() -> None:
    config = WarehouseConfig.from_env(
        {"SIGNALSMITH_WAREHOUSE_DSN": "https://writer:s3cret@ch.example.com:8443/analytics"}
    )
    target = config.target(Path("unused"))
    assert target.kind == "http"
    assert target.database == "analytics"
    assert target.dsn == "https://writer:s3cret@ch.example.com:8443/default"
    assert target.display == "https://ch.example.com:8443/analytics"
    assert "s3cret" not in target.display

    named = WarehouseConfig.from_env(
        {
            "SIGNALSMITH_WAREHOUSE_DSN": "http://ch:8123",
            "SIGNALSMITH_WAREHOUSE_DATABASE": "events",
        }
    )
    assert named.target(Path("unused")).database == "events"


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"SIGNALSMITH_WAREHOUSE_DSN": "postgres://db/x"}, "unsupported scheme"),
        ({"SIGNALSMITH_WAREHOUSE_DSN": "chdb://memory"}, "loses every event"),
        ({"SIGNALSMITH_WAREHOUSE_BATCH_SIZE": "lots"}, "BATCH_SIZE"),
        ({"SIGNALSMITH_WAREHOUSE_MAX_COLUMNS": "0"}, "MAX_COLUMNS=0 .* at least 1"),
        (
            {"SIGNALSMITH_WAREHOUSE_MAX_EVENT_TABLES_PER_SOURCE": "0"},
            "MAX_EVENT_TABLES_PER_SOURCE=0 .* at least 1",
        ),
        (
            {"SIGNALSMITH_WAREHOUSE_MAX_NEW_EVENT_TABLES_PER_BATCH": "-1"},
            "MAX_NEW_EVENT_TABLES_PER_BATCH=-1 .* at least 1",
        ),
        ({"SIGNALSMITH_WAREHOUSE_MAX_WAIT_SECONDS": "-1"}, "at least 0"),
    ],
)
def test_unusable_settings_name_the_fix(environ: dict[str, str], says: str) -> None:
    with pytest.raises(WarehouseConfigError, match=says):
        WarehouseConfig.from_env(environ).target(Path("data"))


def test_the_event_table_caps_default_to_a_few_hundred_and_are_read_from_the_environment() -> None:
    defaults = WarehouseConfig.from_env({})
    assert (defaults.max_event_tables_per_source, defaults.max_new_event_tables_per_batch) == (
        500,
        100,
    )
    config = WarehouseConfig.from_env(
        {
            "SIGNALSMITH_WAREHOUSE_MAX_EVENT_TABLES_PER_SOURCE": "2000",
            "SIGNALSMITH_WAREHOUSE_MAX_NEW_EVENT_TABLES_PER_BATCH": "20",
        }
    )
    assert (config.max_event_tables_per_source, config.max_new_event_tables_per_batch) == (2000, 20)
