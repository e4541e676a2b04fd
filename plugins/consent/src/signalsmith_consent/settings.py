"""What the workspace says about consent: the ``consent:`` section (the categories, the strict
sources, what plugin-registered sinks need, how long preferences are remembered) and each
source's ``consent`` field.

Category names are matched exactly as declared, case included: Segment's category ids are
case-sensitive, user-defined strings (analytics-next sends ``{"Analytics": true}`` when the
consent tool calls it that), so a workspace declares them as its consent tool spells them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# Segment's limits on a category id (`shared/reference/segment-spec.md` section 5): not starting
# with a digit, shorter than 35 characters.
Category = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[^0-9\s][^\s]{0,33}$",
        extra={"expected": "a category id of 1-34 characters, not starting with a digit"},
    ),
]

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "necessary",
    "analytics",
    "functional",
    "marketing",
    "advertising",
)

# Thirteen months: the longest a consent choice is commonly kept before asking again.
DEFAULT_REMEMBER_DAYS = 395.0

# The track event a consent tool sends whenever a user sets or changes their preferences.
PREFERENCE_UPDATED = "Segment Consent Preference Updated"


class ConsentSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``consent:`` section."""

    # The categories destinations and sinks may name; matched as written, case included.
    categories: tuple[Category, ...] = DEFAULT_CATEGORIES
    # Sources where an event without consent preferences (and none remembered) reaches only
    # the sinks that need no category. The same as `sources.<name>.consent: {strict: true}`.
    strict_sources: tuple[str, ...] = ()
    # The categories each plugin-registered sink (a warehouse: `clickhouse`) needs, by name.
    sinks: dict[str, tuple[Category, ...]] = {}
    # Remember each user's last preferences, so their later events without any are judged
    # by them.
    remember: bool = True
    # How long a remembered choice is kept after it was last set or linked (days).
    remember_days: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_REMEMBER_DAYS


class SourceConsent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A source's ``consent`` field."""

    # Without consent preferences (and none remembered), an event reaches only the sinks that
    # need no category.
    strict: bool = False
