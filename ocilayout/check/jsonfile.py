"""Strict JSON parsing for untrusted layout files.

``parse_strict`` rejects invalid UTF-8, NaN and Infinity, and nesting deep
enough to exhaust the parser, and it reports duplicate object keys with
their JSON paths. Go readers keep the last of duplicated keys and Python's
``json`` does the same, so two readers can disagree on a document only
when its keys repeat.
"""

from __future__ import annotations

import json
import re

# Maximum bytes read from one index, manifest, config or oci-layout file.
# Real manifests and configs are typically a few KiB, so the bound only
# stops hostile input.
MAX_JSON_BYTES = 4 * 1024 * 1024

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JSONProblem(ValueError):
    """The bytes are not one valid JSON document."""


class _KeyedObject(dict):
    """A JSON object that remembers the keys its source repeated."""

    duplicates: tuple[str, ...] = ()


def _build_object(pairs: list[tuple[str, object]]) -> _KeyedObject:
    result = _KeyedObject()
    repeated = []
    for key, value in pairs:
        if key in result:
            repeated.append(key)
        result[key] = value
    if repeated:
        result.duplicates = tuple(repeated)
    return result


def _reject_constant(name: str) -> None:
    raise JSONProblem(f"{name} is not valid JSON")


def parse_strict(data: bytes) -> tuple[object, list[tuple[str, str]]]:
    """Parse ``data`` and return ``(value, duplicates)``.

    ``duplicates`` lists ``(json_path, key)`` for every repeated key; the
    parsed value keeps the last occurrence. Raises JSONProblem with a
    message naming the cause.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc

    try:
        value = json.loads(
            text, object_pairs_hook=_build_object, parse_constant=_reject_constant
        )
    except RecursionError as exc:
        raise JSONProblem("nested too deeply to parse") from exc
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:
        # Integers beyond Python's digit limit land here.
        raise JSONProblem(str(exc)) from exc

    return value, _find_duplicates(value)


def _find_duplicates(value: object) -> list[tuple[str, str]]:
    found = []
    pending = [("$", value)]
    while pending:
        path, node = pending.pop()
        if isinstance(node, _KeyedObject):
            found.extend((path, key) for key in node.duplicates)
            pending.extend((child_path(path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            pending.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
    return sorted(found)


def child_path(path: str, key: str | int) -> str:
    """Extend a JSON path by an array index or an object key."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"
