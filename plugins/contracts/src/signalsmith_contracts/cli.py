from __future__ import annotations

import click


@click.group()
def contracts() -> None:
    """Tracking plans: import, test, infer, shadow reports and violations."""
