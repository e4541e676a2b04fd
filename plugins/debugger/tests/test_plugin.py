"""The plugin is wired through its entry point, and its settings say what is wrong with them."""

from __future__ import annotations

import pytest

from signalsmith.testing import plugin_infos, plugin_manager
from signalsmith_debugger.config import DebuggerConfig, DebuggerConfigError


def test_the_entry_point_is_wired() -> None:
    [info] = [
        i for i in plugin_infos(plugin_manager(entry_points=["debugger"])) if i.name == "debugger"
    ]
    assert info.version == "0.1.0"
    assert info.hooks == [
        "embedded_defaults",
        "observe_outcomes",
        "register_admin_routes",
        "register_commands",
        "register_routes",
        "register_warehouses",
        "shutdown",
        "startup",
        "wants_routine_outcomes",
        "write_events",
    ]


def test_defaults_and_what_follows_from_them() -> None:
    config = DebuggerConfig.from_env({})
    assert config.trace_seconds == 7 * 86400
    assert config.trace_max_bytes == 256 * 1024 * 1024
    assert config.slice_seconds == 3600  # a week in 168 slices
    assert config.slice_max_bytes == 16 * 1024 * 1024
    short = DebuggerConfig.from_env({"SIGNALSMITH_DEBUGGER_TRACE_SECONDS": "60"})
    assert short.slice_seconds == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TRACE_SECONDS", "a week", "SIGNALSMITH_DEBUGGER_TRACE_SECONDS='a week' is not valid"),
        ("TRACE_MAX_BYTES", "0", "must be above 0"),
        ("VIEWER_BUFFER", "-5", "must be above 0"),
        ("PAYLOAD_BYTES", "100", "at least 256"),
    ],
)
def test_a_bad_setting_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(DebuggerConfigError, match=message.replace("(", r"\(")):
        DebuggerConfig.from_env({f"SIGNALSMITH_DEBUGGER_{name}": value})
