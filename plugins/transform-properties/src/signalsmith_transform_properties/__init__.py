"""SignalSmith's properties transform: add (static or templated), remove, hash and cap event
fields. ``plugin`` registers the ``properties`` type; ``editing`` holds its settings and
function, ``templates`` the ``{{ ... }}`` values."""

from __future__ import annotations

from signalsmith_transform_properties.editing import (
    CapSettings,
    HashSettings,
    PropertiesSettings,
    hash_value,
)
from signalsmith_transform_properties.templates import Template

__all__ = ["CapSettings", "HashSettings", "PropertiesSettings", "Template", "hash_value"]
