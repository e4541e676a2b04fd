"""SignalSmith's function transform: a Python function of your own, called with each batch
within a time budget. Functions raise ``DropEvent`` to drop an event; ``Context`` is what they
are handed beside it. ``plugin`` registers the ``function`` type; ``running`` runs it."""

from __future__ import annotations

from signalsmith_transform_function.contract import Context, DropEvent, RetryError
from signalsmith_transform_function.running import FunctionSettings, FunctionStats

__all__ = ["Context", "DropEvent", "FunctionSettings", "FunctionStats", "RetryError"]
