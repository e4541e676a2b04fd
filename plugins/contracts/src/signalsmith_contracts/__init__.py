"""Event contracts for SignalSmith: tracking plans enforced at collection (see README.md)."""

from __future__ import annotations

__version__ = "0.1.0"
