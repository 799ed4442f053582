"""Settings as form fields: each key's type from the config schema, its current value as text,
and the check that flags a bad value inline before anything is saved."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from relay.ops import PARSED_TYPES, Config, Duration, key_paths

GROUPS: list[tuple[str, list[str]]] = [  # laid out like the IIS Delivery and Messages tabs
    ("Outbound: retry, delay notification, expiration",
     ["delivery.retry", "delivery.delay_notification", "delivery.expiration"]),
    ("Local mail", ["delivery.local.delay_notification", "delivery.local.expiration"]),
    ("Outbound security: smart host and credentials",
     ["delivery.smarthost", "delivery.attempt_direct_first", "delivery.auth.username",
      "delivery.auth.password_file", "delivery.auth.password_env", "delivery.ca_file"]),
    ("Outbound connections",
     ["delivery.port", "delivery.max_connections", "delivery.max_connections_per_domain",
      "delivery.messages_per_connection", "delivery.timeout"]),
    ("Advanced delivery", ["delivery.max_hop_count", "delivery.masquerade_domain", "hostname"]),
    ("Messages", ["delivery.ndr_copy_to"]),
]


def form_keys() -> list[str]:
    """Every delivery.* key and hostname, in form order (keys not grouped yet go last)."""
    wanted = [k for k in key_paths() if k.startswith("delivery.")] + ["hostname"]
    grouped = [k for _, keys in GROUPS for k in keys]
    return [k for k in grouped if k in wanted] + [k for k in wanted if k not in grouped]


def _schema(path: str) -> tuple[Any, dict]:
    """The type and field metadata of a key path."""
    cls: Any = Config
    tp, meta = None, {}
    for part in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        tp, meta = typing.get_type_hints(cls)[part], dict(fields[part].metadata)
        cls = tp
    return tp, meta


def _value(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


@dataclass
class Field:
    key: str
    doc: str
    kind: Any  # the type, optional stripped
    optional: bool
    text: str  # the current value as the operator writes it

    @property
    def is_bool(self) -> bool:
        return self.kind is bool

    @property
    def label(self) -> str:
        return self.key.removeprefix("delivery.").replace("_", " ")

    def check(self, text: str) -> str | None:
        """Why `text` is not a valid value for this key, or None."""
        text = text.strip()
        if not text:
            return None if self.optional else "a value is required"
        try:
            if typing.get_origin(self.kind) is list:
                items = [t.strip() for t in text.strip("[]").split(",") if t.strip()]
                for item in items:
                    Duration.parse(item)
                if len(items) != 4:
                    return "give four intervals: first, second, third, subsequent"
            elif self.kind in PARSED_TYPES:
                self.kind.parse(text)
            elif self.kind is int and not (text.isdigit()):
                return f"expected a whole number >= 0, not {text!r}"
        except ValueError as exc:
            return str(exc)
        return None

    def setting_text(self, text: str) -> str:
        """The value as set_many takes it (YAML scalar or flow list)."""
        text = text.strip()
        if not text:
            return "null"
        if typing.get_origin(self.kind) is list:
            return "[" + ", ".join(t.strip() for t in text.strip("[]").split(",")) + "]"
        return text


def show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def fields_for(config: Config) -> list[Field]:
    out = []
    for key in form_keys():
        tp, meta = _schema(key)
        optional = typing.get_origin(tp) in (types.UnionType, typing.Union)
        kind = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
        out.append(Field(key, meta.get("doc", ""), kind, optional, show(_value(config, key))))
    return out


