"""What `signalsmith sql` (and the admin API) agrees to run, decided from ClickHouse's own parse.

ClickHouse's read-only mode is not enough on its own: it lets the function ``file()`` read any
file the server can, and ``DESCRIBE url(...)`` (or ``s3``, ``remote``, ``mysql``, ...) opens a
connection to infer a schema. A list of keywords cannot close that, so the check asks ClickHouse
how it reads the query, without running it (the query travels as a string literal):

1. ``formatQuerySingleLine`` gives the statement as ClickHouse reads it: one statement (it
   refuses ``a; b``), without comments. That text, not the one sent, is what then runs.
2. ``parseQueryToJSON`` of that text gives its syntax tree, which `_Check` walks: the statement
   kind; every table (the warehouse's database only); every table function
   (``ALLOWED_TABLE_FUNCTIONS``); every function (`functions.refusal`); no ``SETTINGS``,
   ``FORMAT`` or ``INTO OUTFILE``. A node type or statement key the walk does not know is
   refused, so what a newer ClickHouse adds stays out until someone looks at it.

``DESCRIBE``, ``SHOW CREATE TABLE`` and ``EXISTS`` have no JSON form: their table expression is
checked as the ``FROM`` of ``SELECT * FROM <it>``, the same parser reading the same text.

The session the statement runs in is the second wall: ``readonly = 1`` for chDB, ``readonly =
2`` with the limits for a server (where a reader user whose grants allow nothing else is the
third; see the README).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from signalsmith_warehouse_clickhouse.functions import refusal

# Table functions that make their rows in the engine, from their arguments alone. Everything
# else reads files, URLs, other servers, other databases or dictionaries, or runs programs.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateSeries",
        "primes",
        # Rows written in the query: values('a UInt8', 1, 2), and (VALUES (1), (2)).
        "values",
        "SQLStandardValues",
        # Random rows for trying a query out; no I/O, and the limits bound it.
        "generateRandom",
    }
)

READ_STATEMENTS = (
    "SELECT",
    "WITH",
    "SHOW TABLES",
    "SHOW COLUMNS",
    "DESCRIBE",
    "SHOW CREATE TABLE",
    "EXISTS",
    "EXPLAIN",
)

# Statements ClickHouse cannot give as JSON, by how it formats them, and what may follow the
# prefix: any table expression, or only a table's name.
_TABLE_STATEMENTS = {
    "DESCRIBE TABLE ": "any",
    "SHOW CREATE TABLE ": "name",
    "EXISTS TABLE ": "name",
}

_EXPLAIN_KINDS = frozenset(
    {
        "EXPLAIN",
        "EXPLAIN AST",
        "EXPLAIN SYNTAX",
        "EXPLAIN QUERY TREE",
        "EXPLAIN PIPELINE",
        "EXPLAIN ESTIMATE",
    }
)
# EXPLAIN's own options (`EXPLAIN actions = 1 SELECT ...`); they are not settings.
_EXPLAIN_OPTIONS = frozenset(
    {
        "header",
        "description",
        "indexes",
        "projections",
        "actions",
        "json",
        "sorting",
        "distributed",
        "keep_logical_steps",
        "pretty",
        "optimize",
        "graph",
        "compact",
        "oneline",
        "run_passes",
        "dump_passes",
        "passes",
        "dump_tree",
        "dump_ast",
        "query_tree_passes",
        "run_query_tree_passes",
    }
)

_IN_FUNCTIONS = frozenset(
    {
        "in",
        "notIn",
        "globalIn",
        "globalNotIn",
        "nullIn",
        "notNullIn",
        "globalNullIn",
        "globalNotNullIn",
    }
)

# Every node type a read-only statement is made of; any other is refused.
_NODE_TYPES = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ExpressionList",
        "Literal",
        "Identifier",
        "Function",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsApplyTransformer",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformerReplacement",
        "OrderByElement",
        "InterpolateElement",
        "WindowDefinition",
        "WindowListElement",
        "Subquery",
        "WithElement",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "SampleRatio",
    }
)

_OUTPUT_FLAGS = ("is_outfile_append", "is_outfile_truncate", "is_into_outfile_with_stdout")

# The keys a statement-level node may have; another one (a clause this check does not know)
# refuses the query.
_KEYS: dict[str, frozenset[str]] = {
    "SelectWithUnionQuery": frozenset(
        {"type", "union_mode", "list_of_modes", "list_of_selects", "alias", *_OUTPUT_FLAGS}
    ),
    "SelectIntersectExceptQuery": frozenset({"type", "final_operator", "children", "alias"}),
    "SelectQuery": frozenset(
        {
            "type",
            "alias",
            "distinct",
            "with",
            "recursive_with",
            "select",
            "tables",
            "prewhere",
            "where",
            "group_by",
            "group_by_all",
            "group_by_with_totals",
            "group_by_with_rollup",
            "group_by_with_cube",
            "group_by_with_constant_keys",
            "group_by_with_grouping_sets",
            "having",
            "window",
            "qualify",
            "order_by",
            "order_by_all",
            "limit_by_offset",
            "limit_by_length",
            "limit_by",
            "limit_by_all",
            "limit_offset",
            "limit_length",
            "limit_with_ties",
            "interpolate",
        }
    ),
    "TableExpression": frozenset(
        {
            "type",
            "database_and_table_name",
            "table_function",
            "subquery",
            "final",
            "sample_size",
            "sample_offset",
        }
    ),
    "ExplainQuery": frozenset({"type", "kind", "query", "settings", *_OUTPUT_FLAGS}),
    "ShowTablesQuery": frozenset(
        {
            "type",
            "from",
            "like",
            "not_like",
            "case_insensitive_like",
            "where_expression",
            "limit_length",
            "full",
            *_OUTPUT_FLAGS,
        }
    ),
    "ShowColumnsQuery": frozenset(
        {
            "type",
            "database",
            "table",
            "like",
            "not_like",
            "case_insensitive_like",
            "where_expression",
            "limit_length",
            "extended",
            "full",
            *_OUTPUT_FLAGS,
        }
    ),
}


TOO_OLD = (
    "this ClickHouse cannot parse a query without running it (parseQueryToJSON, ClickHouse "
    "26.8 and later), which `signalsmith sql` needs to check what a query reaches: upgrade the "
    "server"
)


class NotReadOnly(ValueError):
    """A query `signalsmith sql` will not run; the message says what to change."""


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _only_reads(statement: str) -> str:
    words = statement.split()
    kind = " ".join(words[:2] if words[:1] == ["SHOW"] else words[:1])
    return (
        f"only read-only queries run here ({', '.join(READ_STATEMENTS)}), not {kind!r}; "
        "the warehouse's tables are written by the worker alone"
    )


def checked_statement(sql: str, database: str, ask: Callable[[str], Any]) -> str:
    """The statement to run for ``sql``: ClickHouse's own rendering of it, once its syntax tree
    passed the checks; NotReadOnly says why not.

    ``ask`` runs a query in a read-only session and returns its one value. Its errors (a syntax
    error, say) pass through, except those that mean a refusal.
    """
    try:
        statement = str(ask(f"SELECT formatQuerySingleLine({_literal(sql)})")).strip()
    except Exception as error:
        text = str(error)
        if "UNKNOWN_FUNCTION" in text and "formatQuerySingleLine" in text:
            raise NotReadOnly(TOO_OLD) from error
        if "Empty query" in text:
            raise NotReadOnly(
                "the query is empty: give a statement such as SELECT count() FROM tracks"
            ) from error
        if "Multi-statements are not allowed" in text:
            raise NotReadOnly(
                "one statement at a time: split the query at its ';' and run each"
            ) from error
        raise
    probe, table_part = statement, None
    for prefix, part in _TABLE_STATEMENTS.items():
        if statement.startswith(prefix):
            probe, table_part = "SELECT * FROM " + statement[len(prefix) :], part
            break
    try:
        tree = ask(f"SELECT parseQueryToJSON({_literal(probe)})")
    except Exception as error:
        if "does not support JSON serialization" in str(error):
            raise NotReadOnly(_only_reads(statement)) from error
        if "UNKNOWN_FUNCTION" in str(error) and "parseQueryToJSON" in str(error):
            raise NotReadOnly(TOO_OLD) from error
        raise
    check = _Check(database)
    try:
        parsed = json.loads(tree)
        if table_part is None:
            check.statement(parsed, statement)
        else:
            check.table_statement(parsed, statement, names_only=table_part == "name")
    except RecursionError as error:
        raise NotReadOnly("the query nests too deeply to check: simplify it") from error
    return statement


class _Check:
    """The walk over one statement's syntax tree (``parseQueryToJSON``'s JSON)."""

    def __init__(self, database: str) -> None:
        self.database = database

    # --- statements -------------------------------------------------------------------------

    def statement(self, tree: Any, text: str) -> None:
        kind = tree.get("type") if isinstance(tree, dict) else None
        if kind == "SelectWithUnionQuery":
            self.node(tree)
        elif kind == "ExplainQuery":
            self._explain(tree, text)
        elif kind == "ShowTablesQuery":
            self._known_keys(tree, refuse=_only_reads(text))
            if "from" in tree:
                database = ".".join(_identifier_parts(tree["from"]))
                self._database(database, f"the database {database!r}")
            self._walk_values(tree)
        elif kind == "ShowColumnsQuery":
            self._known_keys(tree, refuse=_only_reads(text))
            database = str(tree.get("database") or self.database)
            self._database(database, f"{database}.{tree.get('table')}")
            self._walk_values(tree)
        else:
            raise NotReadOnly(_only_reads(text))

    def table_statement(self, tree: Any, text: str, *, names_only: bool) -> None:
        """DESCRIBE and the like, whose table expression came back as ``SELECT * FROM it``."""
        selects = _dig(tree, "list_of_selects", "children")
        select = selects[0] if isinstance(selects, list) and len(selects) == 1 else None
        elements = _dig(select, "tables", "children")
        columns = _dig(select, "select", "children")
        table = elements[0] if isinstance(elements, list) and len(elements) == 1 else None
        expression = table.get("table_expression") if isinstance(table, dict) else None
        plain = (
            set(tree) <= _KEYS["SelectWithUnionQuery"]
            and set(select or {}) == {"type", "select", "tables"}
            and columns == [{"type": "Asterisk"}]
            and set(table or {}) == {"type", "table_expression"}
            and isinstance(expression, dict)
        )
        if plain and names_only:
            plain = set(expression) == {"type", "database_and_table_name"}
        if not plain:
            # What follows the table (SETTINGS, FORMAT, INTO OUTFILE) shows up as more than one
            # table expression in the SELECT.
            words = text.split()
            raise NotReadOnly(
                f"{' '.join(words[:2] if names_only else words[:1])} takes "
                f"{'the name of a table' if names_only else 'a table'} here, and nothing after "
                "it (no SETTINGS, FORMAT or INTO OUTFILE)"
            )
        self.node(tree)

    def _explain(self, tree: dict[str, Any], text: str) -> None:
        self._known_keys(tree, refuse=f"{tree.get('kind', 'EXPLAIN')} is not allowed here")
        if tree.get("kind") not in _EXPLAIN_KINDS:
            raise NotReadOnly(
                f"{tree.get('kind')} is not allowed here: EXPLAIN [AST | SYNTAX | QUERY TREE | "
                "PLAN | PIPELINE | ESTIMATE] of a SELECT is"
            )
        for change in _dig(tree, "settings", "changes") or []:
            name = change.get("name") if isinstance(change, dict) else None
            if name not in _EXPLAIN_OPTIONS:
                raise NotReadOnly(f"EXPLAIN option {name!r} is not one this check knows")
        query = tree.get("query")
        if not isinstance(query, dict) or query.get("type") != "SelectWithUnionQuery":
            raise NotReadOnly("EXPLAIN runs here for a SELECT only")
        self.node(query)

    # --- nodes --------------------------------------------------------------------------------

    def node(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.node(item)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind is None:
            # A plain record inside a node (a frame bound, say) can hold nodes too.
            self._walk_values(node)
            return
        if kind == "SetQuery":
            raise NotReadOnly(
                "leave out the SETTINGS clause: queries run with the warehouse's own settings "
                "(read-only, FINAL, the SIGNALSMITH_WAREHOUSE_QUERY_* limits)"
            )
        if kind == "QueryParameter":
            raise NotReadOnly(
                f"query parameters ({{{node.get('name')}:...}}) are not supported: write the "
                "value into the query"
            )
        if kind not in _NODE_TYPES:
            raise NotReadOnly(f"ClickHouse reads part of this query as {kind}, not allowed here")
        if kind == "SelectWithUnionQuery":
            self._select_union(node)
        elif kind in _KEYS:
            self._known_keys(node, refuse=None)
        if kind == "Literal":
            return  # Its value is data.
        if kind == "TableIdentifier":
            self._table(_identifier_parts(node))
        elif kind == "TableExpression":
            function = node.get("table_function")
            if function is not None:
                self._table_function(function)
                self._walk_values(node, skip="table_function")
                return
        elif kind == "Function":
            self._function(node)
        elif kind == "ColumnsApplyTransformer" and "func_name" in node:
            self._called(str(node["func_name"]))
        self._walk_values(node)

    def _walk_values(self, node: dict[str, Any], skip: str | None = None) -> None:
        for key, value in node.items():
            if key != skip and isinstance(value, dict | list):
                self.node(value)

    def _select_union(self, node: dict[str, Any]) -> None:
        if "out_file" in node or node.get("is_into_outfile_with_stdout"):
            raise NotReadOnly(
                "INTO OUTFILE is not allowed: print the result with --format csv instead"
            )
        if "format_ast" in node:
            raise NotReadOnly(
                "leave out the FORMAT clause: `signalsmith sql --format table|json|csv` "
                "chooses the output"
            )
        self._known_keys(node, refuse=None)

    def _known_keys(self, node: dict[str, Any], *, refuse: str | None) -> None:
        kind = node["type"]
        if "settings" in node and kind != "ExplainQuery":
            self.node({"type": "SetQuery"})
        unknown = sorted(key for key in set(node) - _KEYS[kind] if node[key])
        if unknown:
            raise NotReadOnly(
                refuse
                or f"ClickHouse reads this query with {', '.join(unknown)} in a {kind}, "
                "which this check does not know: leave that clause out"
            )

    def _function(self, node: dict[str, Any]) -> None:
        name = str(node.get("name"))
        self._called(name)
        if name in _IN_FUNCTIONS:
            arguments = _dig(node, "arguments", "children") or []
            if len(arguments) == 2 and _dig(arguments[1], "type") == "Identifier":
                # `x IN db.table` reads that table.
                self._table(_identifier_parts(arguments[1]))

    def _called(self, name: str) -> None:
        reason = refusal(name)
        if reason is not None:
            raise NotReadOnly(reason)

    def _table_function(self, function: Any) -> None:
        name = _dig(function, "name")
        if name not in ALLOWED_TABLE_FUNCTIONS:
            raise NotReadOnly(
                f"the table function {name}() is not allowed here: it can reach outside the "
                "warehouse (files, URLs, other servers or databases). Table functions that "
                f"make rows in the engine run: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}"
            )
        self._walk_values(function)

    def _table(self, parts: list[str]) -> None:
        if len(parts) > 2:
            raise NotReadOnly(f"{'.'.join(parts)} does not name a table")
        if len(parts) == 2:
            self._database(parts[0], ".".join(parts))

    def _database(self, database: str, what: str) -> None:
        if database != self.database:
            raise NotReadOnly(
                f"only the warehouse's own tables can be read (database {self.database!r}): "
                f"{what} is outside it"
            )


def _identifier_parts(node: Any) -> list[str]:
    parts = _dig(node, "name_parts")
    if isinstance(parts, list) and parts:
        return [str(part) for part in parts]
    return [str(_dig(node, "name"))]


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
