"""Names: go-snakecase's own test vectors, and the safety rules added on top for tables."""

from __future__ import annotations

import re

import pytest

from signalsmith_warehouse_clickhouse.naming import (
    MAX_COLUMN_NAME,
    MAX_TABLE_NAME,
    RESERVED_TABLES,
    column_name,
    event_table_candidates,
    quote,
    snakecase,
)

# segmentio/go-snakecase's test table, plus the examples of the reference, section 6.
GO_SNAKECASE = [
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("Order Completed", "order_completed"),
    ("context.app.version", "context_app_version"),
    ("Café", "caf"),
    ("日本語", ""),
]


@pytest.mark.parametrize(("text", "expected"), GO_SNAKECASE)
def test_snakecase_follows_go_snakecase(text: str, expected: str) -> None:
    assert snakecase(text) == expected


SAFE = re.compile(r"[a-z0-9_]+")


@pytest.mark.parametrize(
    "name",
    [
        "Order Completed",
        "日本語",
        "🚀",
        "users",
        "Identifies",
        "_event_tables",
        "x" * 300,
        "",
        "a;b",
    ],
)
def test_every_candidate_table_is_safe_and_never_a_fixed_table(name: str) -> None:
    candidates = event_table_candidates(name)
    assert len(set(candidates)) == len(candidates)
    for table in candidates:
        assert SAFE.fullmatch(table), table
        assert table not in RESERVED_TABLES
        assert len(table) <= MAX_TABLE_NAME


def test_names_that_snakecase_to_nothing_get_a_stable_hashed_table() -> None:
    [first, *_] = event_table_candidates("日本語のイベント")
    assert re.fullmatch(r"event_[0-9a-f]{8}", first)
    assert event_table_candidates("日本語のイベント")[0] == first
    assert event_table_candidates("中文事件")[0] != first


def test_fixed_table_names_are_never_given_to_an_event() -> None:
    assert event_table_candidates("users")[0].startswith("users_")
    assert event_table_candidates("Identifies")[0].startswith("identifies_")


def test_long_names_are_cut_and_keep_apart() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    assert event_table_candidates(a)[0] != event_table_candidates(b)[0]
    assert event_table_candidates(a)[0].startswith("x" * 40)


def test_colliding_names_share_the_first_candidate_only() -> None:
    one, two = event_table_candidates("Order Completed"), event_table_candidates("order_completed")
    assert one[0] == two[0] == "order_completed"
    assert not set(one[1:]) & set(two[1:])


def test_column_names_flatten_paths_and_survive_anything() -> None:
    assert column_name(("address", "streetName")) == "address_street_name"
    assert column_name(("app", "version"), "context_") == "context_app_version"
    assert re.fullmatch(r"column_[0-9a-f]{8}", column_name(("名前",)))
    long = column_name(("a" * 500,))
    assert len(long) <= MAX_COLUMN_NAME and long != column_name(("a" * 499 + "b",))


def test_quote_escapes_backticks() -> None:
    assert quote("plain") == "`plain`"
    assert quote("a`b\\c") == "`a\\`b\\\\c`"
