"""The config's settings as the operator sees them: every key path of the schema (the settings
form, the IIS import's key order) and each setting's effective value with its description
(`mailroot check`, Admin.settings_get)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from relay.core.config import PARSED_TYPES, Config, HostPort


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key path, effective value, description) for every setting, for `mailroot check`."""
    rows: list[tuple[str, str, str]] = []

    def show(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(show(v) for v in value) + "]"
        if value is None:
            return "(none)"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, HostPort):
                walk(value, path + ".")
            elif isinstance(value, dict):
                if not value:
                    rows.append((path, "{}", f.metadata.get("doc", "")))
                for name, sub in value.items():
                    items = sub if isinstance(sub, list) else [sub]
                    for i, item in enumerate(items):
                        walk(item, f"{path}.{name}{f'[{i}]' if len(items) > 1 else ''}.")
            else:
                rows.append((path, show(value), f.metadata.get("doc", "")))

    walk(config, "")
    effective = {"hostname": config.fqdn, "domains.local.default": config.default_domain}
    return [(k, effective.get(k, v), d) for k, v, d in rows]


def key_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every fixed key path of the schema (remote domains are per-domain, shown as <domain>)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp) and tp not in PARSED_TYPES:
            paths += key_paths(tp, path + ".")
        elif typing.get_origin(tp) is dict:
            item = typing.get_args(tp)[1]
            if typing.get_origin(item) is list:  # dkim: one or more sections per domain
                item = typing.get_args(item)[0]
            paths += key_paths(item, path + ".<domain>.")
        else:
            paths.append(path)
    return paths
