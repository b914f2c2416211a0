"""Serializers for job data, meta and return values, as RQ defines them.

The serializer is not recorded in Redis (docs/PROTOCOL.md §3.2): producers and workers agree on
it out of band (`--serializer`). `pickle` trusts whoever can write to Redis; `json` does not run
code on load.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

from workerd.utils import import_attribute


class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    name = "pickle"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


class JSONSerializer:
    name = "json"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode("utf-8")

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


_ALIASES: dict[str, Serializer] = {
    "pickle": PickleSerializer(),
    "json": JSONSerializer(),
    # RQ's own dotted paths, so `-S rq.serializers.JSONSerializer` keeps working without RQ installed.
    "rq.serializers.DefaultSerializer": PickleSerializer(),
    "rq.serializers.JSONSerializer": JSONSerializer(),
}


def resolve_serializer(spec: str | Serializer | None) -> Serializer:
    """`None`/'pickle' -> pickle; 'json'; a dotted path to a class or object with dumps/loads."""
    if spec is None:
        return _ALIASES["pickle"]
    if not isinstance(spec, str):
        return spec
    if spec in _ALIASES:
        return _ALIASES[spec]
    found = import_attribute(spec)
    serializer = found() if isinstance(found, type) else found
    if not (callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None))):
        raise TypeError(f"serializer {spec!r} has no dumps()/loads()")
    return serializer
