"""Property-based tests of workspace checking: no input crashes it.

Whatever the text or structure, checking either returns a typed document or refuses it with
``WorkspaceInvalid`` whose every error has a message (and, for a readable document, a line).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from signalsmith.hooks import Hooks
from signalsmith.testing import plugin_manager, workspace_types
from signalsmith.workspace import DocumentText, Registry, WorkspaceInvalid
from signalsmith.workspace.schema import workspace_schema
from signalsmith.workspace.text import read_document
from signalsmith.workspace.validation import load_document

REGISTRY = Registry.from_hooks(Hooks(plugin_manager(workspace_types)))

GOOD: dict[str, Any] = {
    "version": 1,
    "sources": {
        "web": {"transforms": ["drop", "tag"], "destinations": ["hook"]},
        "app": {"description": "mobile"},
    },
    "transforms": {
        "drop": {"type": "drop-event", "settings": {"event": "Checkout"}},
        "tag": {"type": "tag", "settings": {"property": "via", "value": "web"}},
    },
    "destinations": {
        "hook": {
            "type": "http-post",
            "settings": {"url": "https://example.com/in", "token": "${HOOK_TOKEN}"},
            "routing": {"types": ["track"], "events": ["Order *"]},
            "batch_size": 10,
        }
    },
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["${X}", "$${X}", "track", "tag", "http-post", "web", "https://a.b", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.sampled_from([*GOOD, "settings", "type"])),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def check(document: DocumentText) -> None:
    try:
        load_document(document, REGISTRY)
    except WorkspaceInvalid as refused:
        assert refused.errors
        for error in refused.errors:
            assert error.message
            assert str(error)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = replaced(value[head], rest, new, delete)
        return copy
    copy = list(value)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = replaced(value[head], rest, new, delete)
    return copy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_any_text_is_checked_or_refused(text: str) -> None:
    check(DocumentText(text=text))
    check(DocumentText(text=text, format="json"))


@settings(max_examples=200, deadline=None)
@given(values)
# Found by this test: JSON escapes of a surrogate pair, and a lone surrogate.
@example({"sources": {"0": {"transforms": "\ud800\udc00"}}})
@example({"sources": {"web": {"transforms": ["\udc00"]}}})
def test_any_structure_is_checked_or_refused(value: Any) -> None:
    check(DocumentText(text=json.dumps(value), format="json"))
    check(DocumentText(text=yaml.safe_dump(value)))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutations_of_a_good_document_are_checked_or_refused_with_lines(
    data: st.DataObject,
) -> None:
    document = GOOD
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(paths(document)))
        delete = bool(path) and data.draw(st.booleans())
        document = replaced(document, path, data.draw(values), delete)
    text = yaml.safe_dump(document, sort_keys=False)
    try:
        load_document(DocumentText(text=text), REGISTRY)
    except WorkspaceInvalid as refused:
        for error in refused.errors:
            assert error.message
            # A readable document: every error is placed on a line of it.
            assert error.line is not None, error


def test_the_good_document_is_good_and_fits_the_schema() -> None:
    import jsonschema

    load_document(DocumentText(text=yaml.safe_dump(GOOD)), REGISTRY)
    jsonschema.validate(GOOD, workspace_schema(REGISTRY))
    assert read_document(DocumentText(text=json.dumps(GOOD), format="json")).value == GOOD
