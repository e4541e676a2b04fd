"""A webhook destination for SignalSmith: events POSTed as JSON, one by one or in batches,
signed with HMAC-SHA256. The plugin is ``signalsmith_dest_webhook.plugin``."""

from __future__ import annotations

from signalsmith_dest_webhook.plugin import WebhookSettings, signature

__version__ = "0.1.0"

__all__ = ["WebhookSettings", "__version__", "signature"]
