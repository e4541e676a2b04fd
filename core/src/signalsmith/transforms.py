"""Transform instances: a plugin's transform type, its checked settings, under a name.

Plugins register transform *types* (``register_transforms``); configuration declares named
*instances* of them (``SIGNALSMITH_TRANSFORMS``), and a source lists instance names in the order
they run. Instances are checked and built once, at startup: an unknown type or settings that do
not fit the type's Struct stop the process with an error naming the instance and the setting.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import msgspec

from signalsmith.config import TransformDeclaration
from signalsmith.hooks import PluginConfigError
from signalsmith.records import SettingsError, Transform, TransformFunction, TransformType


def build_instance(kind: TransformType, settings: Any, name: str) -> TransformFunction:
    """``kind.build(settings)``, with ``name=`` when the build function declares it."""
    try:
        takes_name = "name" in inspect.signature(kind.build).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        takes_name = False
    return kind.build(settings, name=name) if takes_name else kind.build(settings)  # type: ignore[call-arg]


def settings_error_text(where: str, error: SettingsError) -> str:
    """``transforms.bots.settings.rules[0].match: <message>``, as the workspace reports it."""
    path = where
    for part in error.path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{path}: {error.message}"


def build_transform(name: str, declaration: TransformDeclaration, kind: TransformType) -> Transform:
    """The instance ``name`` of ``kind``; PluginConfigError names what is wrong with it."""
    where = f"transforms.{name}.settings"
    if kind.settings is None:
        if declaration.settings:
            raise PluginConfigError(
                f"{where}: transform type {kind.name!r} (plugin {kind.plugin!r}) takes no "
                f"settings, got {sorted(declaration.settings)}"
            )
        settings: Any = None
    else:
        try:
            settings = msgspec.convert(declaration.settings, kind.settings)
        except msgspec.ValidationError as error:
            raise PluginConfigError(f"{where}: {_located(error)}") from None
    try:
        apply = build_instance(kind, settings, name)
    except SettingsError as error:
        raise PluginConfigError(settings_error_text(where, error)) from None
    except Exception as error:
        raise PluginConfigError(
            f"transforms.{name}: plugin {kind.plugin!r} could not build a {kind.name!r} "
            f"transform: {error}"
        ) from error
    return Transform(name=name, type=kind.name, apply=apply, plugin=kind.plugin)


def configured_transforms(
    declared: Mapping[str, TransformDeclaration], types: Mapping[str, TransformType]
) -> dict[str, Transform]:
    """Every instance a source may list: the declared ones, and, under its own name, each type
    that needs no settings (its defaults build it) and is not a declared name already."""
    instances: dict[str, Transform] = {}
    for name, declaration in declared.items():
        kind = types.get(declaration.type)
        if kind is None:
            raise PluginConfigError(
                f"transforms.{name}.type: no installed plugin registers a transform type "
                f"{declaration.type!r} (registered: {', '.join(sorted(types)) or 'none'})"
            )
        instances[name] = build_transform(name, declaration, kind)
    for type_name, kind in types.items():
        if type_name in instances or not _builds_from_defaults(kind):
            continue
        instances[type_name] = build_transform(
            type_name, TransformDeclaration(type=type_name), kind
        )
    return instances


def _builds_from_defaults(kind: TransformType) -> bool:
    if kind.settings is None:
        return True
    try:
        msgspec.convert({}, kind.settings)
    except msgspec.ValidationError:
        return False
    return True


def _located(error: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.limit``` as ``limit: expected ...``."""
    reason, _, where = str(error).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    reason = reason[:1].lower() + reason[1:]
    return f"{path}: {reason}" if path else reason
