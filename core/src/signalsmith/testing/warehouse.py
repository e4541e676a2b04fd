"""The warehouse conformance suite: what every warehouse backend must do, as tests to subclass.

A backend proves itself by subclassing ``WarehouseConformance`` and overriding one fixture,
``warehouse_under_test``, which yields an object with the ``WarehouseUnderTest`` shape on a
fresh, empty warehouse (its own database or schema per test)::

    from signalsmith.testing.warehouse import WarehouseConformance

    class TestMyWarehouse(WarehouseConformance):
        @pytest.fixture
        async def warehouse_under_test(self):
            async with my_backend_on_a_fresh_schema() as backend:
                yield MyAdapter(backend)

The contract is Segment's warehouse layout (the reference, section 6): tables ``tracks``,
``identifies``, ``users``, ``pages``, ``screens``, ``groups``, ``accounts``, ``aliases`` and
one per track event name; columns ``id``, ``received_at``, ``sent_at``, ``original_timestamp``,
``timestamp``, ``user_id``, ``anonymous_id``, ``event``/``event_text`` (tracks), ``context_*``
and the flattened properties or traits (nested keys joined with ``_``, arrays as JSON text);
types inferred as boolean, integer, float, string or timestamp; a new property becomes a new
column; an integer column that meets a float becomes a float column; a value that does not fit
its column goes to a ``discards`` table (``table_name``, ``column_name``, ``row_id``, ``value``,
``value_type``, ``column_type``, ``reason``, ``received_at``) and the rest of its row is
written; ``users`` and ``accounts`` hold the latest traits per ``id``; and a batch written twice
leaves one row per id in what ``query`` returns.

Nothing here knows a particular database: queries are plain SQL over that layout, identifiers
quoted by the adapter.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from signalsmith.model import Alias, Event, Group, Identify, Page, Screen, Track

FAMILIES = ("boolean", "integer", "float", "string", "timestamp")
FIXED_TABLES = (
    "tracks",
    "identifies",
    "users",
    "pages",
    "screens",
    "groups",
    "accounts",
    "aliases",
)
# What a table name may look like: Segment's snake_case, ASCII only.
SAFE_TABLE = re.compile(r"[a-z0-9_]{1,127}")


class WarehouseUnderTest(Protocol):
    """What a backend hands the suite: a way to write batches and to look at the result."""

    # The column cap per table this warehouse was configured with (keep it under a few
    # hundred for the suite), or None when the backend has none.
    max_columns: int | None

    async def write(self, events: list[Event]) -> None:
        """Write one batch, as the worker's ``write_events`` would."""

    async def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a read-only query, duplicates merged away (what users are told to query).

        Values are JSON-like: timestamps may be datetimes or ISO-8601 strings.
        """

    async def columns(self, table: str) -> dict[str, str]:
        """The table's columns, each with its family: boolean, integer, float, string,
        timestamp (or any other word for a type outside these). Empty if there is no table."""

    async def tables(self) -> set[str]:
        """Every table in the warehouse's database or schema."""

    async def event_table(self, event_text: str) -> str:
        """The table a track event of this name was written to."""

    def quote(self, identifier: str) -> str:
        """``identifier`` quoted for this database's SQL."""


# --- events ---------------------------------------------------------------------------------


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _common(fields: dict[str, Any]) -> dict[str, Any]:
    received_at = fields.pop("received_at", None) or _now()
    common: dict[str, Any] = {
        "message_id": f"conformance-{uuid.uuid4()}",
        "received_at": received_at,
        "timestamp": received_at,
        "user_id": "user-1",
        "context": {"library": {"name": "signalsmith-conformance", "version": "1.0"}},
        "project_id": "conformance",
    }
    common.update(fields)
    return common


def make_track(
    event: str = "Order Completed", properties: dict[str, Any] | None = None, **fields: Any
) -> Track:
    return Track(event=event, properties=properties or {}, **_common(fields))


def make_identify(traits: dict[str, Any] | None = None, **fields: Any) -> Identify:
    return Identify(traits=traits or {}, **_common(fields))


def make_page(
    name: str | None = "Home", properties: dict[str, Any] | None = None, **fields: Any
) -> Page:
    return Page(name=name, properties=properties or {}, **_common(fields))


def make_screen(
    name: str | None = "Home", properties: dict[str, Any] | None = None, **fields: Any
) -> Screen:
    return Screen(name=name, properties=properties or {}, **_common(fields))


def make_group(
    group_id: str = "org-1", traits: dict[str, Any] | None = None, **fields: Any
) -> Group:
    return Group(group_id=group_id, traits=traits or {}, **_common(fields))


def make_alias(previous_id: str = "anon-1", **fields: Any) -> Alias:
    return Alias(previous_id=previous_id, **_common(fields))


def as_datetime(value: Any) -> datetime:
    """A timestamp column's value as an aware UTC datetime, whatever form the backend gave."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def same_instant(value: Any, expected: datetime) -> bool:
    """Equal to the millisecond (warehouses keep milliseconds, as Segment's do)."""
    return abs(as_datetime(value) - expected) < timedelta(milliseconds=1)


# --- the suite --------------------------------------------------------------------------------


class WarehouseConformance:
    """Subclass this (in a class named ``Test...``) and override ``warehouse_under_test``."""

    @pytest.fixture
    def warehouse_under_test(self) -> WarehouseUnderTest:
        pytest.fail(
            "override the warehouse_under_test fixture in your WarehouseConformance subclass: "
            "yield your backend's adapter on a fresh database"
        )

    # -- helpers --

    async def one(self, wh: WarehouseUnderTest, table: str, row_id: str) -> dict[str, Any]:
        rows = await wh.query(f"SELECT * FROM {wh.quote(table)} WHERE id = '{row_id}'")
        assert len(rows) == 1, f"{table}: expected one row with id {row_id!r}, got {rows!r}"
        return rows[0]

    async def discards(self, wh: WarehouseUnderTest, row_id: str) -> list[dict[str, Any]]:
        return await wh.query(
            "SELECT table_name, column_name, row_id, value, value_type, column_type, reason "
            f"FROM discards WHERE row_id = '{row_id}' ORDER BY column_name"
        )

    # -- each message type lands in its table --

    @pytest.mark.asyncio
    async def test_track_lands_in_tracks_and_in_its_event_table(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        sent_at = _now()
        original = sent_at - timedelta(seconds=3)
        event = make_track(
            "Order Completed",
            {
                "revenue": 19.99,
                "quantity": 2,
                "gift": False,
                "couponCode": "SUMMER",
                "deliveredAt": "2024-05-01T12:00:00.250Z",
                "product": {"sku": "A-1", "details": {"colorName": "red"}},
                "tags": ["a", "b"],
            },
            anonymous_id="anon-7",
            sent_at=sent_at,
            original_timestamp=original,
            context={
                "library": {"name": "analytics-python", "version": "2.4.0"},
                "ip": "203.0.113.9",
                "page": {"url": "https://example.com/checkout"},
            },
        )
        await wh.write([event])

        table = await wh.event_table("Order Completed")
        assert table == "order_completed"
        for name in ("tracks", table):
            row = await self.one(wh, name, event.message_id)
            assert row["event"] == "order_completed"
            assert row["event_text"] == "Order Completed"
            assert row["user_id"] == "user-1"
            assert row["anonymous_id"] == "anon-7"
            assert row["context_library_name"] == "analytics-python"
            assert row["context_library_version"] == "2.4.0"
            assert row["context_ip"] == "203.0.113.9"
            assert row["context_page_url"] == "https://example.com/checkout"
            assert same_instant(row["received_at"], event.received_at)
            assert same_instant(row["timestamp"], event.timestamp)
            assert same_instant(row["sent_at"], sent_at)
            assert same_instant(row["original_timestamp"], original)

        tracks = await wh.columns("tracks")
        assert "revenue" not in tracks, "tracks holds the common columns only"
        row = await self.one(wh, table, event.message_id)
        assert row["revenue"] == pytest.approx(19.99)
        assert row["quantity"] == 2
        assert row["gift"] is False
        assert row["coupon_code"] == "SUMMER"
        assert same_instant(row["delivered_at"], datetime(2024, 5, 1, 12, 0, 0, 250000, UTC))
        assert row["product_sku"] == "A-1"
        assert row["product_details_color_name"] == "red"
        assert json.loads(row["tags"]) == ["a", "b"]
        columns = await wh.columns(table)
        assert {
            name: columns[name]
            for name in ("revenue", "quantity", "gift", "coupon_code", "delivered_at", "tags")
        } == {
            "revenue": "float",
            "quantity": "integer",
            "gift": "boolean",
            "coupon_code": "string",
            "delivered_at": "timestamp",
            "tags": "string",
        }
        for name in ("id", "received_at", "sent_at", "original_timestamp", "timestamp"):
            assert name in columns

    @pytest.mark.asyncio
    async def test_identify_lands_in_identifies_and_users(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        event = make_identify(
            {"email": "ada@example.com", "plan": "pro", "address": {"city": "London"}},
            user_id="user-ada",
            anonymous_id="anon-ada",
        )
        await wh.write([event])

        row = await self.one(wh, "identifies", event.message_id)
        assert row["user_id"] == "user-ada"
        assert row["anonymous_id"] == "anon-ada"
        assert row["email"] == "ada@example.com"
        assert row["address_city"] == "London"
        assert row["context_library_name"] == "signalsmith-conformance"

        user = await self.one(wh, "users", "user-ada")
        assert user["email"] == "ada@example.com"
        assert user["plan"] == "pro"
        assert user["address_city"] == "London"
        assert same_instant(user["received_at"], event.received_at)
        assert "anonymous_id" not in await wh.columns("users")

    @pytest.mark.asyncio
    async def test_page_and_screen_land_with_their_properties(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        page = make_page(
            "Pricing",
            {"path": "/pricing", "url": "https://example.com/pricing", "title": "Pricing"},
            category="Docs",
        )
        screen = make_screen("Settings", {"section": "privacy"})
        await wh.write([page, screen])

        row = await self.one(wh, "pages", page.message_id)
        assert (row["name"], row["category"]) == ("Pricing", "Docs")
        assert (row["path"], row["url"], row["title"]) == (
            "/pricing",
            "https://example.com/pricing",
            "Pricing",
        )
        row = await self.one(wh, "screens", screen.message_id)
        assert (row["name"], row["section"]) == ("Settings", "privacy")

    @pytest.mark.asyncio
    async def test_group_lands_in_groups_and_accounts(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        event = make_group("org-42", {"name": "Acme", "employees": 120, "plan": "enterprise"})
        await wh.write([event])

        row = await self.one(wh, "groups", event.message_id)
        assert (row["group_id"], row["name"], row["employees"]) == ("org-42", "Acme", 120)
        account = await self.one(wh, "accounts", "org-42")
        assert (account["name"], account["plan"]) == ("Acme", "enterprise")

    @pytest.mark.asyncio
    async def test_alias_lands_in_aliases(self, warehouse_under_test: WarehouseUnderTest) -> None:
        wh = warehouse_under_test
        event = make_alias("anon-99", user_id="user-99")
        await wh.write([event])

        row = await self.one(wh, "aliases", event.message_id)
        assert (row["previous_id"], row["user_id"]) == ("anon-99", "user-99")

    # -- users and accounts: latest traits --

    @pytest.mark.asyncio
    async def test_users_hold_the_latest_traits(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        start = _now()
        first = make_identify({"plan": "free", "email": "a@example.com"}, received_at=start)
        await wh.write([first])
        # A later call changes one trait and leaves another out: the left-out one is kept.
        second = make_identify({"plan": "pro"}, received_at=start + timedelta(seconds=1))
        # In one batch, the later call wins whatever the batch order.
        third = make_identify({"seats": 5}, received_at=start + timedelta(seconds=3))
        fourth = make_identify({"seats": 3}, received_at=start + timedelta(seconds=2))
        other = make_identify({"plan": "team"}, user_id="user-2", received_at=start)
        await wh.write([second, third, fourth, other])
        # A call older than what is stored only fills what is missing.
        late = make_identify(
            {"plan": "ancient", "company": "Initech"}, received_at=start - timedelta(hours=1)
        )
        await wh.write([late])

        users = await wh.query("SELECT id, plan, email, seats, company FROM users ORDER BY id")
        assert users == [
            {
                "id": "user-1",
                "plan": "pro",
                "email": "a@example.com",
                "seats": 5,
                "company": "Initech",
            },
            {"id": "user-2", "plan": "team", "email": None, "seats": None, "company": None},
        ]

    @pytest.mark.asyncio
    async def test_accounts_hold_the_latest_traits(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        start = _now()
        await wh.write([make_group("org-1", {"name": "Acme", "tier": "gold"}, received_at=start)])
        await wh.write(
            [make_group("org-1", {"name": "Acme Inc"}, received_at=start + timedelta(seconds=1))]
        )

        accounts = await wh.query("SELECT id, name, tier FROM accounts")
        assert accounts == [{"id": "org-1", "name": "Acme Inc", "tier": "gold"}]
        assert len(await wh.query("SELECT id FROM groups")) == 2

    # -- schema evolution --

    @pytest.mark.asyncio
    async def test_a_new_property_adds_a_column_mid_stream(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        before = make_track("Signed Up", {"plan": "free"})
        await wh.write([before])
        table = await wh.event_table("Signed Up")
        assert "referrer_code" not in await wh.columns(table)

        after = make_track("Signed Up", {"plan": "pro", "referrerCode": "R-9"})
        await wh.write([after])

        assert (await wh.columns(table))["referrer_code"] == "string"
        assert (await self.one(wh, table, after.message_id))["referrer_code"] == "R-9"
        assert (await self.one(wh, table, before.message_id))["referrer_code"] is None

    @pytest.mark.asyncio
    async def test_a_null_creates_no_column(self, warehouse_under_test: WarehouseUnderTest) -> None:
        wh = warehouse_under_test
        await wh.write([make_track("Searched", {"query": "shoes", "filters": None})])
        assert "filters" not in await wh.columns(await wh.event_table("Searched"))

    @pytest.mark.asyncio
    async def test_a_conflicting_type_goes_to_discards_and_the_row_is_kept(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        await wh.write([make_track("Item Viewed", {"stock": 4, "sku": "A"})])
        clash = make_track("Item Viewed", {"stock": "plenty", "sku": "B", "shelf": "top"})
        await wh.write([clash])

        table = await wh.event_table("Item Viewed")
        assert (await wh.columns(table))["stock"] == "integer"
        row = await self.one(wh, table, clash.message_id)
        assert (row["stock"], row["sku"], row["shelf"]) == (None, "B", "top")
        [discard] = await self.discards(wh, clash.message_id)
        assert discard["table_name"] == table
        assert discard["column_name"] == "stock"
        assert discard["value"] == "plenty"
        assert discard["value_type"] == "string"
        assert discard["reason"] == "type_conflict"
        assert discard["column_type"]

    @pytest.mark.asyncio
    async def test_an_integer_column_widens_to_float(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        first = make_track("Product Added", {"price": 10})
        await wh.write([first])
        table = await wh.event_table("Product Added")
        assert (await wh.columns(table))["price"] == "integer"

        second = make_track("Product Added", {"price": 10.5})
        third = make_track("Product Added", {"price": 7})
        await wh.write([second, third])

        assert (await wh.columns(table))["price"] == "float"
        prices = {
            row["id"]: row["price"] for row in await wh.query(f"SELECT id, price FROM {table}")
        }
        assert prices == {first.message_id: 10.0, second.message_id: 10.5, third.message_id: 7.0}
        if "discards" in await wh.tables():
            assert await wh.query("SELECT row_id FROM discards") == []

    @pytest.mark.asyncio
    async def test_a_property_named_like_a_fixed_column_is_discarded(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        event = make_track("Logged In", {"id": "spoofed", "method": "sso"})
        await wh.write([event])

        table = await wh.event_table("Logged In")
        row = await self.one(wh, table, event.message_id)
        assert row["method"] == "sso"
        [discard] = await self.discards(wh, event.message_id)
        assert (discard["column_name"], discard["value"]) == ("id", "spoofed")

    @pytest.mark.asyncio
    async def test_columns_past_the_cap_go_to_discards(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        if wh.max_columns is None:
            pytest.skip("this warehouse has no column cap")
        if wh.max_columns > 500:
            pytest.skip("configure a column cap under 500 for the conformance run")
        properties = {f"p{index:04d}": index for index in range(wh.max_columns + 5)}
        event = make_track("Wide Event", properties)
        await wh.write([event])

        table = await wh.event_table("Wide Event")
        columns = await wh.columns(table)
        assert len(columns) <= wh.max_columns
        kept = {name for name in properties if name in columns}
        dropped = await self.discards(wh, event.message_id)
        assert {d["column_name"] for d in dropped} == set(properties) - kept
        assert {d["reason"] for d in dropped} == {"column_limit"}
        row = await self.one(wh, table, event.message_id)
        assert all(row[name] == properties[name] for name in kept)

    # -- naming --

    @pytest.mark.asyncio
    async def test_any_event_name_gets_a_safe_table_of_its_own(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        names = [
            "Order Completed",
            "order_completed",  # snake-cases like the one above
            "OrderCompleted",
            "Checkout Step 2.1 Viewed",
            "Café Visité",
            "日本語のイベント",
            "🚀",
            "Виджет открыт",
            "select",
            "DROP TABLE tracks; --",
            "from",
            "users",
            "Identifies",
            "_event_tables",
            "discards",
            "x" * 300,
            "x" * 299 + "y",
            "a.b.c",
            "  leading and trailing  ",
        ]
        events = {name: make_track(name, {"n": index}) for index, name in enumerate(names)}
        await wh.write(list(events.values()))

        tables = {name: await wh.event_table(name) for name in names}
        assert len(set(tables.values())) == len(names), tables
        for name, table in tables.items():
            assert SAFE_TABLE.fullmatch(table), f"{name!r} -> {table!r}"
            assert table not in FIXED_TABLES and table != "discards", f"{name!r} -> {table!r}"
            rows = await wh.query(f"SELECT id, event_text FROM {wh.quote(table)}")
            assert rows == [{"id": events[name].message_id, "event_text": name}], name
        assert tables["Order Completed"] == "order_completed"
        assert tables["select"] == "select"
        assert tables["Checkout Step 2.1 Viewed"] == "checkout_step_2_1_viewed"
        tracked = await wh.query("SELECT event, event_text FROM tracks")
        assert {row["event_text"]: row["event"] for row in tracked} == tables
        if "users" in await wh.tables():
            assert await wh.query("SELECT id FROM users") == []

        # The same names later (another batch, another process) find the same tables.
        again = {name: make_track(name, {"n": 0}) for name in names}
        await wh.write(list(again.values()))
        assert {name: await wh.event_table(name) for name in names} == tables

    # -- exactly once, as users see it --

    @pytest.mark.asyncio
    async def test_the_same_batch_twice_leaves_one_row_per_id(
        self, warehouse_under_test: WarehouseUnderTest
    ) -> None:
        wh = warehouse_under_test
        batch: list[Event] = [
            make_track("Order Completed", {"revenue": 5}),
            make_track("Order Completed", {"revenue": 7, "note": 3}),
            make_identify({"plan": "pro"}),
            make_page("Home", {"path": "/"}),
            make_screen("Home"),
            make_group("org-1", {"name": "Acme"}),
            make_alias("anon-1"),
        ]
        await wh.write(batch)
        # A redelivery: the same batch, and a batch that overlaps it, after a crash.
        await wh.write(batch)
        await wh.write([*batch[1:3], make_track("Order Completed", {"revenue": 9})])

        table = await wh.event_table("Order Completed")
        for name, expected in [
            ("tracks", 3),
            (table, 3),
            ("identifies", 1),
            ("users", 1),
            ("pages", 1),
            ("screens", 1),
            ("groups", 1),
            ("accounts", 1),
            ("aliases", 1),
        ]:
            rows = await wh.query(f"SELECT id FROM {wh.quote(name)}")
            assert len(rows) == expected, (name, rows)
            assert len({row["id"] for row in rows}) == expected, name
        assert (await self.one(wh, "users", "user-1"))["plan"] == "pro"
