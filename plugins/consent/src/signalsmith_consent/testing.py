"""Workspace documents for tests of consent: sources feeding webhook destinations, each needing
its categories."""

from __future__ import annotations


def consent_document(
    urls: dict[str, str],
    needs: dict[str, list[str]],
    *,
    consent_section: str = "consent: {}",
    strict: bool = False,
) -> str:
    """Sources ``web`` and ``kiosk`` (strict when ``strict``) feeding one webhook destination per
    name in ``needs``, at ``urls[name]``, needing ``needs[name]``; then ``consent_section``."""
    destinations = "\n".join(
        f"""  {name}:
    type: webhook
    settings: {{url: "{urls[name]}"}}
    max_wait_seconds: 0.05
    routing: {{consent: [{", ".join(needs[name])}]}}"""
        for name in needs
    )
    strict_field = ", consent: {strict: true}" if strict else ""
    return f"""\
version: 1
sources:
  web: {{destinations: [{", ".join(needs)}]}}
  kiosk: {{destinations: [{", ".join(needs)}]{strict_field}}}
destinations:
{destinations}
{consent_section}
"""


def declaring(categories: list[str], more: str = "") -> str:
    """A ``consent:`` section declaring ``categories``, then ``more`` (indented lines)."""
    return f"consent:\n  categories: [{', '.join(categories)}]\n{more}"
