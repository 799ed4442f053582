"""The imported settings as a config file's text: each valid value that differs from mailroot's
default, with the IIS property it came from as a comment, the report in the header; checked
as `mailroot check` would before anything is written. And the report's lines for stderr.
"""

from __future__ import annotations

import time
from typing import Any

import yaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from relay.cli.iis_import import Imported
from relay.core import config_loader
from relay.core.config import Config, ConfigError, Domain
from relay.ops import settings
from relay.ops.config_keys import key_paths


def _value_of(config: Config, key: str) -> Any:
    node: Any = config
    for part in settings.split_key(key):
        node = node.get(Domain.parse(part)) if isinstance(node, dict) else getattr(node, part)
    return node


def _parsed(key: str, value: Any) -> Config:
    """A config holding only this one value (raises ConfigError naming the key)."""
    doc = settings.Document(CommentedMap())
    doc.set(settings.split_key(key), value)
    return config_loader.parse(yaml.safe_dump(_plain(doc.root)), None)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def settled(result: Imported) -> dict[str, Any]:
    """The values to write: each valid one that differs from mailroot's default."""
    defaults = Config()
    keep: dict[str, Any] = {}
    for key, value in result.values.items():
        try:
            parsed = _parsed(key, value)
        except ConfigError as exc:
            result.problem(result.sources.get(key, key), "", f"not a valid {key}: {exc.reason}")
            continue
        if key.startswith(("domains.", "hostname")) or _value_of(parsed, key) != _value_of(
                defaults, key):
            keep[key] = value
    return keep


def render(result: Imported, source: str) -> str:
    """The config text: a header with the report, then the settings, each with its origin."""
    values = settled(result)
    root = CommentedMap()
    doc = settings.Document(root)
    for key in _ordered(values):
        value = values[key]
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            value = seq
        parts = settings.split_key(key)
        doc.set(parts, value)
        parent = doc.get(parts[:-1]) if len(parts) > 1 else root
        parent.yaml_add_eol_comment(f"IIS {result.sources.get(key, '')}", parts[-1])
    header = [f"mailroot configuration imported from {source}",
              f"(IIS SMTP virtual server {result.server}) on "
              f"{time.strftime('%Y-%m-%d %H:%M')} by mailroot import-iis.",
              "Settings equal to mailroot's defaults (the IIS dialog defaults) are not "
              "written; see config.example.yaml for every key.",
              "Check with: mailroot check -c THIS_FILE"]
    if result.problems:
        header += ["", "NEEDS ATTENTION (not imported):"] + [f"  {p}" for p in result.problems]
    if result.not_imported:
        header += ["", "Not imported:"] + [f"  {p}" for p in result.not_imported]
    header += [f"  {note}" for note in result.notes]
    if not values:
        root["mailroot"] = Config().mailroot  # an empty mapping would not be a config
    root.yaml_set_start_comment("\n".join(header) + "\n")
    text = doc.dump()
    config_loader.parse(text, None)  # what `mailroot check` does: a bug here must not be written
    return text


def _ordered(values: dict[str, Any]) -> list[str]:
    """Keys in the order of config.example.yaml (the schema's order)."""
    order = {path: i for i, path in enumerate(key_paths())}

    def rank(key: str) -> tuple[int, str]:
        if key.startswith("domains.remote."):
            return order.get("domains.remote.<domain>.tls", 0), key
        return order.get(key, len(order)), key

    return sorted(values, key=rank)


def report_lines(result: Imported) -> list[str]:
    return ([f"problem: {p}" for p in result.problems]
            + [f"not imported: {p}" for p in result.not_imported])
