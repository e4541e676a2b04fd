"""The JSON Schema of the workspace document as the installed plugins define it.

`signalsmith config schema` prints it, so an editor (VS Code's YAML extension, IntelliJ) can
complete and check a ``signalsmith.yaml``. Each instance is a ``type`` discriminator plus the
settings schema msgspec derives from the type's Struct. Unknown settings are refused, as the
core refuses them; a constrained string also takes a ``${ENV_NAME}`` placeholder (checked once
resolved), and a ``Secret`` takes only one. ``$include`` is not described: the schema checks the
document once its includes are expanded.
"""

from __future__ import annotations

from typing import Any

import msgspec

from signalsmith.workspace.validation import (
    FORMAT_VERSION,
    NAME_PATTERN,
    DestinationSpec,
    MessageType,
    Registry,
    RoutingSpec,
)

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_PLACEHOLDER_STRING = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"}
_CONSTRAINTS = ("pattern", "minLength", "maxLength", "format")


class _Schemas:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def of(self, prefix: str, annotation: Any) -> dict[str, Any]:
        """The schema of ``annotation``; its named parts go to ``$defs`` under ``prefix``."""
        (schema,), components = msgspec.json.schema_components(
            [annotation], ref_template=f"#/$defs/{prefix}.{{name}}"
        )
        for name, component in components.items():
            self.defs[f"{prefix}.{name}"] = _adapt(component)
        return _adapt(schema)


def _adapt(schema: Any) -> Any:
    """Refuse unknown settings; let constrained strings be placeholders (module docstring)."""
    if isinstance(schema, list):
        return [_adapt(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    adapted = {key: _adapt(value) for key, value in schema.items()}
    if adapted.get("type") == "object" and "properties" in adapted:
        adapted.setdefault("additionalProperties", False)
    if (
        adapted.get("type") == "string"
        and not adapted.get("writeOnly")
        and any(key in adapted for key in _CONSTRAINTS)
    ):
        return {"anyOf": [adapted, _PLACEHOLDER_STRING]}
    return adapted


def _names(item: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": item,
    }


def _settings(schemas: _Schemas, prefix: str, kind: Any) -> tuple[dict[str, Any], bool]:
    """The settings schema of a type, and whether settings must be given (a required one)."""
    if kind is None:
        return {"type": "object", "maxProperties": 0}, False
    required = any(field.required for field in msgspec.structs.fields(kind))
    return schemas.of(prefix, kind), required


def _instance(
    type_name: str,
    description: str,
    settings: dict[str, Any],
    required: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    properties = {
        "type": {"const": type_name, "description": description}
        if description
        else {"const": type_name},
        "settings": settings,
        "description": {"type": "string"},
        **extra,
    }
    return {
        "type": "object",
        "properties": properties,
        "required": ["type", "settings"] if required else ["type"],
        "additionalProperties": False,
    }


def workspace_schema(registry: Registry) -> dict[str, Any]:
    """The document's JSON Schema (draft 2020-12) for ``registry``'s types and sections."""
    schemas = _Schemas()
    transforms = [
        _instance(
            name, kind.description, *_settings(schemas, f"transform.{name}", kind.settings), {}
        )
        for name, kind in sorted(registry.transform_types.items())
    ]
    routing = schemas.of("core", RoutingSpec)
    delivery = {
        field: schemas.of("core", _field_type(field))
        for field in (
            "mapping",
            "mappings",
            "batch_size",
            "max_wait_seconds",
            "max_attempts",
            "retry_window_seconds",
        )
    }
    destinations = [
        _instance(
            name,
            kind.description,
            *_settings(schemas, f"destination.{name}", kind.settings),
            {"routing": routing, **delivery},
        )
        for name, kind in sorted(registry.destination_types.items())
    ]
    source_properties: dict[str, Any] = {
        "description": {"type": "string"},
        "transforms": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}},
        "destinations": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}},
    }
    properties: dict[str, Any] = {
        "version": {"const": FORMAT_VERSION, "description": "The format of this document."},
    }
    for name, section in sorted(registry.sections.items()):
        prefix = f"section.{name}"
        if section.settings is not None:
            properties[name] = schemas.of(prefix, section.settings)
            if section.description:
                properties[name] = {**properties[name], "description": section.description}
        if section.source_field is not None:
            source_properties[section.source_field] = (
                schemas.of(prefix, section.source_settings)
                if section.source_settings is not None
                else {}
            )
    source = {"type": "object", "properties": source_properties, "additionalProperties": False}
    properties["sources"] = _names(source)
    properties["transforms"] = _names({"oneOf": transforms} if transforms else False)
    properties["destinations"] = _names({"oneOf": destinations} if destinations else False)
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "title": "SignalSmith workspace",
        "description": "Sources, transforms and destinations: see docs/workspace.md.",
        "type": "object",
        "properties": properties,
        "required": ["version"],
        "additionalProperties": False,
    }
    if schemas.defs:
        schema["$defs"] = schemas.defs
    return schema


def _field_type(name: str) -> Any:
    return {field.name: field.type for field in msgspec.structs.fields(DestinationSpec)}[name]


__all__ = ["MessageType", "workspace_schema"]
