"""Read a config file into the schema (relay/core/config.py) and check it.

The YAML is walked node by node against the dataclasses, so errors name the file, the key path
and the line, and an operator can fix a broken config without guessing; then the cross-key
rules that a single value can't express.  Only the supervisor, the single-process relay and the
operator's side read a file: a child process gets its config already checked.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from relay.core.config import PARSED_TYPES, SELECTOR_RE, Config, ConfigError, Domain


class _Loader:
    """Walk a composed YAML node tree against the dataclass schema, keeping line numbers."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self.lines: dict[str, int] = {}  # key path -> line, for cross-key errors

    def error(self, node: yaml.Node | None, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, key=key)

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, "expected a single value, not a list or mapping")
        return yaml.SafeLoader("").construct_object(node)  # type: ignore[arg-type]

    def convert(self, node: yaml.Node, tp: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            inner = next(a for a in args if a is not type(None))
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return None
            return self.convert(node, inner, key)
        if dataclasses.is_dataclass(tp) and tp not in PARSED_TYPES:
            return self.section(node, tp, key)
        if origin is list:
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return []
            if isinstance(node, yaml.MappingNode) and dataclasses.is_dataclass(args[0]):
                return [self.section(node, args[0], key)]  # one section: a list of one
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, key, "expected a list")
            for i, item in enumerate(node.value):
                self.lines[f"{key}[{i}]"] = item.start_mark.line + 1
            return [self.convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict:
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return {}
            pairs = self.pairs(node, key)
            result: dict = {}
            for name, (knode, vnode) in pairs.items():
                try:
                    dkey = args[0].parse(name)
                except ValueError as exc:
                    raise self.error(knode, f"{key}.{name}", str(exc)) from None
                result[dkey] = self.convert(vnode, args[1], f"{key}.{name}")
            return result
        value = self.scalar(node, key)
        if origin is Literal:
            if value not in args:
                raise self.error(node, key, f"must be one of {', '.join(map(str, args))}, "
                                            f"not {value!r}")
            return value
        if tp in PARSED_TYPES:
            if tp is Domain and value is None:
                raise self.error(node, key, "a domain name is required")
            try:
                return tp.parse(value if isinstance(value, str) else str(value))
            except ValueError as exc:
                raise self.error(node, key, str(exc)) from None
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(node, key, f"expected true or false, not {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.error(node, key, f"expected a whole number >= 0, not {value!r}")
            return value
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.error(node, key, f"expected text, not {value!r}")
            return str(value)
        raise AssertionError(f"unhandled type {tp!r}")

    def pairs(self, node: yaml.Node, key: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key or "(top level)", "expected a mapping of keys")
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = str(self.scalar(knode, key))
            path = f"{key}.{name}" if key else name
            self.lines.setdefault(path, knode.start_mark.line + 1)
            if name in pairs:
                what = "a second default domain" if path == "domains.local.default" else \
                    "duplicate key"
                raise self.error(knode, path, f"{what} (first given on line "
                                              f"{pairs[name][0].start_mark.line + 1})")
            pairs[name] = (knode, vnode)
        return pairs

    def section(self, node: yaml.Node, cls: type, key: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return cls()
        pairs = self.pairs(node, key)
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values = {}
        for name, (knode, vnode) in pairs.items():
            path = f"{key}.{name}" if key else name
            if name not in known:
                raise self.error(knode, path, "unknown key (known here: "
                                              f"{', '.join(sorted(known))})")
            values[name] = self.convert(vnode, hints[name], path)
        return cls(**values)


def parse(text: str, file: str | None = None) -> Config:
    """Parse config text; raise ConfigError naming file, line and key."""
    loader = _Loader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=file,
                          line=mark.line + 1 if mark else None) from None
    config = Config(source=file) if root is None else loader.section(root, Config, "")
    config = dataclasses.replace(config, source=file)
    check(config, loader.lines, file)
    return config


def check(config: Config, lines: dict[str, int] | None = None, file: str | None = None) -> None:
    """Cross-key rules that a single value can't express."""
    lines = lines or {}

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, line=lines.get(key), key=key)

    seen = {config.default_domain}
    for i, domain in enumerate(config.domains.local.aliases):
        if domain in seen:
            raise fail(f"domains.local.aliases[{i}]", f"{domain} is already a local domain")
        seen.add(domain)
    written = {k.lower().rstrip("."): k for k in lines}  # as typed, for the line number
    for domain in config.domains.remote:
        if domain in seen:
            key = f"domains.remote.{domain}"
            raise fail(written.get(key, key), f"{domain} is both a local and a remote domain")
    if len(config.delivery.retry) != 4:
        raise fail("delivery.retry", "give four intervals: first, second, third, subsequent")
    if bool(config.smtp.tls.cert) != bool(config.smtp.tls.key):
        raise fail("smtp.tls", "set both cert and key, or neither")
    if config.smtp.tls.require and not config.smtp.tls.cert:
        raise fail("smtp.tls.require", "STARTTLS can't be required without smtp.tls.cert/key")
    for key in ("stress_timeout", "greeting_timeout"):
        if not getattr(config.smtp, key):
            raise fail(f"smtp.{key}", "must be longer than 0s (0 would drop every client at once)")
    for domain, keys in config.dkim.items():
        prefix = written.get(f"dkim.{domain}", f"dkim.{domain}")
        if not keys:
            raise fail(prefix, "give a selector and key_file, or remove the domain")
        selectors: set[str] = set()
        for i, key in enumerate(keys):
            where = f"{prefix}[{i}]" if f"{prefix}[{i}]" in lines else prefix

            def fail_at(name: str, message: str, where: str = where) -> ConfigError:
                path = f"{where}.{name}"
                return ConfigError(message, file=file, key=path,
                                   line=lines.get(path, lines.get(where)))

            if not SELECTOR_RE.fullmatch(key.selector):
                raise fail_at("selector", "a selector (DNS labels, like mail2026) is required, "
                                          f"not {key.selector!r}")
            if key.selector.lower() in selectors:
                raise fail_at("selector", f"selector {key.selector} is given twice")
            selectors.add(key.selector.lower())
            if not key.key_file:
                raise fail_at("key_file", "the private key's file is required")
    if config.smtp.workers < 0:
        raise fail("smtp.workers", "give 0 (one per core), 1 (one process) or more")
    if config.log.keep < 1:
        raise fail("log.keep", "keep at least one rotated file")
    if config.log.max_size < 64 * 1024:
        raise fail("log.max_size", "rotate at 64KiB or more")
    if config.metrics.listen and config.metrics.listen.port is None:
        raise fail("metrics.listen", "give host:port, e.g. 127.0.0.1:9154")
    if config.queue.active_limit < 1:
        raise fail("queue.active_limit", "must be at least 1")


def load(path: str | Path | None) -> Config:
    """Load a config file; None gives the defaults (a mailroot in ./mailroot)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None
    return parse(text, str(path))
