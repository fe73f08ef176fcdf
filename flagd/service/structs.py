"""Fast conversion between `google.protobuf.Struct` and plain Python values.

`json_format.MessageToDict` goes through JSON-shaped intermediate objects; walking the
oneof directly is several times cheaper, and this sits on every evaluation's path.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.struct_pb2 import ListValue, Struct, Value


def value_to_py(value: Value) -> Any:
    """One `Value` as None/bool/float/str/dict/list (numbers stay doubles, as on the wire)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return list_to_py(value.list_value)
    return None  # null_value or unset


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A `Struct` as a dict."""
    return {key: value_to_py(v) for key, v in struct.fields.items()}


def list_to_py(values: ListValue) -> list[Any]:
    """A `ListValue` as a list."""
    return [value_to_py(v) for v in values.values]


def fill_struct(struct: Struct, data: dict[str, Any]) -> None:
    """Copy a JSON-like dict into ``struct`` (ints become doubles, as Struct requires)."""
    if data:
        struct.update(data)
