"""How a transform type's own checks surface: ``SettingsError`` from a settings Struct's
``__post_init__`` refuses the document with the setting's path and line; from ``build``, it
keeps a collector on the version it runs, with the same path; ``build`` may take the name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from signalsmith import SettingsError, TransformType, hookimpl
from signalsmith.testing import track
from signalsmith.testing.transforms import build_chains, run_chain, workspace_errors
from signalsmith.workspace import BuildFailed


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pattern: str

    def __post_init__(self) -> None:
        if "(" in self.pattern:
            raise SettingsError(("pattern",), f"the pattern {self.pattern!r} does not compile")


class CheckedSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rules: tuple[Rule, ...] = ()
    condition: str = "all"
    file: str = ""

    def __post_init__(self) -> None:
        if self.condition == "bad":
            raise SettingsError(("condition",), "the condition does not parse")


def build_checked(settings: CheckedSettings, name: str) -> Any:
    if settings.file:
        raise SettingsError(("file",), f"cannot open {settings.file!r} here")

    def apply(source: Any, events: list) -> Any:
        return None

    apply.instance = name  # type: ignore[attr-defined]
    return apply


class CheckedPlugin:
    @hookimpl
    def register_transforms(self, register: Callable[[TransformType], None]) -> None:
        register(TransformType(name="checked", settings=CheckedSettings, build=build_checked))


DOCUMENT = """\
version: 1
sources: {{web: {{transforms: [one]}}}}
transforms:
  one:
    type: checked
    settings:
{settings}
"""


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            "      rules: [{pattern: ok}, {pattern: 'a('}]",
            "transforms.one.settings.rules[1].pattern: the pattern 'a(' does not compile (line 7)",
        ),
        (
            "      condition: bad",
            "transforms.one.settings.condition: the condition does not parse (line 7)",
        ),
    ],
)
def test_a_settings_error_is_reported_at_the_setting_with_its_line(
    settings: str, expected: str
) -> None:
    assert workspace_errors(DOCUMENT.format(settings=settings), CheckedPlugin()) == [expected]


async def test_build_gets_the_instance_name_and_its_settings_errors_name_the_setting() -> None:
    [one] = build_chains(DOCUMENT.format(settings="      condition: all"), CheckedPlugin())["web"]
    assert one.apply.instance == "one"
    assert (await run_chain([one], [track()])).events[0].type == "track"
    with pytest.raises(BuildFailed) as failed:
        build_chains(DOCUMENT.format(settings="      file: /x.db"), CheckedPlugin())
    assert str(failed.value) == "transforms.one.settings.file: cannot open '/x.db' here"
