"""``signalsmith contracts import`` and ``contracts test``: every export shape, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from signalsmith import Settings
from signalsmith.testing import build_cli

DATA = Path(__file__).parent / "data"


def run(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_cli(settings), ["contracts", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("source", "kind", "rules"),
    [
        ("segment_shop.json", "segment-public-api", "1 COMMON, 1 IDENTIFY, 3 TRACK"),
        ("typewriter_plan.json", "segment-typewriter", "1 TRACK"),
        ("config_api.json", "segment-config-api", "1 COMMON, 1 TRACK"),
        ("rudder_api.json", "rudderstack-api", "1 IDENTIFY, 1 TRACK"),
        ("rudder-cli", "rudder-cli", "1 IDENTIFY, 1 TRACK"),
    ],
)
def test_import_converts_each_export_to_public_api_rules(
    settings: Settings, tmp_path: Path, source: str, kind: str, rules: str
) -> None:
    out = tmp_path / "plans" / "shop.json"
    code, _, err = run(settings, "import", str(DATA / source), "-o", str(out))
    assert code == 0, err
    assert f"as {kind}: plan 'Shop', {rules}" in err
    plan = json.loads(out.read_text())
    assert plan["name"] == "Shop"
    assert {rule["type"] for rule in plan["rules"]} <= {"COMMON", "TRACK", "IDENTIFY"}
    # What it wrote reads back as itself.
    code, printed, _ = run(settings, "import", str(out))
    assert code == 0 and json.loads(printed) == plan


def test_import_refuses_what_is_not_a_plan_naming_where(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"rules": [{"type": "TRACK", "key": "A", "jsonSchema": {"type": 5}}]})
    )
    code, _, err = run(settings, "import", str(bad))
    assert code == 2
    assert "rules[0].jsonSchema.type" in err and "not valid JSON Schema" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert run(settings, "import", str(broken))[0] == 2


def test_contracts_test_exits_0_1_or_2_for_ci(settings: Settings, tmp_path: Path) -> None:
    plan = str(DATA / "segment_shop.json")
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u",
                "properties": {"order_id": "1"},
                "context": {"library": {"name": "x"}},
            }
        )
        + "\n\n"
        + json.dumps(
            {
                "type": "identify",
                "userId": "u",
                "traits": {"email": "a@b.c"},
                "context": {"library": {"name": "x"}},
            }
        )
        + "\n"
    )
    code, out, _ = run(settings, "test", plan, str(good))
    assert code == 0, out
    assert "2 events: 2 passed" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        good.read_text()
        + json.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u",
                "properties": {"currency": "GBP"},
                "context": {"library": {"name": "x"}},
            }
        )
        + "\n"
        + json.dumps(
            {
                "type": "track",
                "event": "Unknown",
                "userId": "u",
                "context": {"library": {"name": "x"}},
            }
        )
        + "\n"
    )
    code, out, _ = run(settings, "test", plan, str(bad))
    assert code == 1
    assert "line 4 (track 'Order Completed'): blocked" in out
    assert "Required: properties.order_id: order_id is required" in out
    assert "line 5 (track 'Unknown'): blocked" in out
    assert (
        "4 events: 2 passed, 0 allowed with violations, 0 with properties omitted, 2 blocked" in out
    )
    code, out, _ = run(
        settings,
        "test",
        plan,
        str(bad),
        "--violations",
        "allow",
        "--unplanned-events",
        "allow",
        "-q",
    )
    assert code == 1 and "1 allowed with violations" in out and "line" not in out
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"type": "track"\n')
    code, _, err = run(settings, "test", plan, str(garbage))
    assert code == 2 and "line 1" in err


def test_the_plugin_is_registered_through_its_entry_point(settings: Settings) -> None:
    from signalsmith.testing import plugin_infos, plugin_manager

    [info] = plugin_infos(plugin_manager(entry_points=["contracts"]))
    assert info.name == "contracts"
    assert info.hooks == [
        "register_admin_routes",
        "register_commands",
        "register_workspace_sections",
        "shutdown",
        "startup",
        "validate_events",
    ]
    code, out, _ = run(settings, "--help")
    assert code == 0
    for command in ("import", "test", "violations", "shadow-report", "infer"):
        assert command in out
