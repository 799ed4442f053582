"""Edit the config file in place: keep its comments and layout, validate before writing.

Every change is made on a round-trip (ruamel.yaml) copy of the file, the result is checked by
`relay.core.config.parse` exactly as the relay would load it, and only then written atomically
(tmp + fsync + rename), so a bad value never reaches the file and a running relay watching it
never sees a half-written config.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

from relay.core import config_loader
from relay.core.config import Config, ConfigError, Domain, RemoteDomain
from relay.core.envelope import new_id
from relay.core.fileops import fsync_dir
from relay.ops.config_keys import key_paths

REMOTE = "domains.remote."
ALIASES = ["domains", "local", "aliases"]
REMOTE_FIELDS = sorted(key_paths(RemoteDomain), key=len, reverse=True)


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line the operator wrote
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def split_key(key: str) -> list[str]:
    """A key path as its parts; a remote domain's name (with its dots) is one part."""
    if key.startswith(REMOTE):
        rest = key[len(REMOTE):]
        for name in REMOTE_FIELDS:
            if rest.endswith("." + name):
                return ["domains", "remote", rest[:-len(name) - 1], *name.split(".")]
        return ["domains", "remote", rest]
    return key.split(".")


def parse_value(key: str, text: str) -> Any:
    """A value as typed on the command line, read as YAML (`[15m, 30m, 1h, 4h]`, `null`)."""
    if not text.strip():
        return None
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        raise ConfigError(f"not a valid value: {text!r} ({getattr(exc, 'problem', exc)})",
                          key=key) from None


def domain_name(text: str, key: str = "domains") -> str:
    try:
        return str(Domain.parse(text))
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def write_atomic(path: Path, text: str) -> None:
    """Replace the file's content in one step: a reader sees the old file or the new one."""
    mode = os.stat(path).st_mode & 0o7777 if path.exists() else 0o644
    tmp = path.with_name(f".{path.name}.{new_id()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class Document:
    """The config file's round-trip tree, with the few edits the operator API makes."""

    def __init__(self, root: CommentedMap) -> None:
        self.root = root
        self._opened: list[tuple[CommentedMap, str]] = []
        # keys added after the last of a mapping, with the leaf that was last before them
        self._appended: list[tuple[tuple[CommentedMap, str], CommentedMap, str]] = []

    # --- navigation ---

    @staticmethod
    def _find(mapping: CommentedMap, name: str) -> str | None:
        """The key as written (domain names match whatever their case)."""
        if name in mapping:
            return name
        folded = name.lower().rstrip(".")
        return next((k for k in mapping if str(k).lower().rstrip(".") == folded), None)

    def section(self, parts: list[str]) -> CommentedMap:
        """The mapping at `parts`, created (in block style) where missing or empty."""
        node = self.root
        for part in parts:
            key = self._find(node, part) or part
            child = node.get(key)
            if not isinstance(child, CommentedMap) or not child:  # missing, null or `{}`
                child = CommentedMap()
                if key in node:  # `remote: {}` with its comment: now a block under the key
                    self._opened.append((node, key))
                self._put(node, key, child)
            node = child
        return node

    def _put(self, mapping: CommentedMap, key: str, value: Any) -> None:
        """Set a key; one added after the mapping's last takes over the blank lines that
        followed it (see settle_comments)."""
        last = _last_leaf(mapping) if key not in mapping else None
        mapping[key] = value
        if last is not None:
            self._appended.append((last, mapping, key))

    def get(self, parts: list[str]) -> Any:
        node: Any = self.root
        for part in parts:
            if not isinstance(node, CommentedMap):
                return None
            key = self._find(node, part)
            if key is None:
                return None
            node = node[key]
        return node

    def set(self, parts: list[str], value: Any) -> None:
        parent = self.section(parts[:-1])
        self._put(parent, self._find(parent, parts[-1]) or parts[-1], value)

    def delete(self, parts: list[str]) -> bool:
        """Remove a key; when it was the mapping's last, the blank lines after it stay, after
        what is last now (or after the mapping's own key, when it is left empty)."""
        parent = self.get(parts[:-1])
        key = self._find(parent, parts[-1]) if isinstance(parent, CommentedMap) else None
        if key is None:
            return False
        last = list(parent)[-1] == key
        tail = _take_blank_lines(_last_leaf(parent[key]) or (parent, key)) if last else ""
        del parent[key]
        target = _last_leaf(parent)
        if not parent:  # written `{}` on its key's line, as config.example.yaml has it
            parent.fa.set_flow_style()
        if target is None and len(parts) > 1:
            grandparent = self.get(parts[:-2])
            target = (grandparent, self._find(grandparent, parts[-2]))
        _give_blank_lines(target, tail)
        return True

    def rename(self, parts: list[str], new: str) -> None:
        parent = self.get(parts[:-1])
        key = self._find(parent, parts[-1])
        position = list(parent).index(key)
        parent.insert(position, new, parent.pop(key))

    def sequence(self, parts: list[str]) -> CommentedSeq:
        """The list at `parts` (kept in its written style; `[]` stays a flow list)."""
        value = self.get(parts)
        if not isinstance(value, CommentedSeq):
            value = CommentedSeq()
            self.set(parts, value)
        if not value:
            value.fa.set_flow_style()
        return value

    def remove_item(self, parts: list[str], name: str) -> bool:
        """Remove a domain from the list at `parts` (whatever its case); False if absent."""
        items = self.sequence(parts)
        matches = [i for i, item in enumerate(items) if str(item).lower().rstrip(".") == name]
        for i in reversed(matches):
            del items[i]
        if not items:
            items.fa.set_flow_style()  # an emptied block list is written `[]`
        return bool(matches)

    # --- output ---

    def settle_comments(self) -> None:
        """Blank lines stay where they separate sections: a flow mapping opened into a block
        keeps its comment on the key's line, but the blank lines that followed it go after
        the new block; so do those after the entry a new key was added behind."""
        for parent, key in self._opened:
            _move_blank_lines((parent, key), _last_leaf(parent[key]))
        for before, parent, key in self._appended:
            if key in parent:
                _move_blank_lines(before, _last_leaf(parent[key]) or (parent, key))
        self._opened.clear()
        self._appended.clear()

    def dump(self) -> str:
        self.settle_comments()
        out = io.StringIO()
        _yaml().dump(self.root, out)
        return out.getvalue()


def _take_blank_lines(source: tuple[CommentedMap, str]) -> str:
    """The blank lines after a key's line (the tail of its trailing comment token), taken
    off it."""
    token = source[0].ca.items.get(source[1], [None, None, None])[2]
    if token is None:
        return ""
    kept = token.value.rstrip("\n") + "\n"
    tail = token.value[len(kept):]
    token.value = kept
    return tail


def _give_blank_lines(target: tuple[CommentedMap, str] | None, tail: str) -> None:
    """Blank lines after a key's line, after its own comment if it has one."""
    if not tail or target is None:
        return
    items = target[0].ca.items
    token = items.get(target[1], [None, None, None])[2]
    if token is None:
        items[target[1]] = [None, None, CommentToken("\n" + tail, CommentMark(0), None), None]
    else:
        token.value = token.value.rstrip("\n") + "\n" + tail


def _move_blank_lines(source: tuple[CommentedMap, str],
                      target: tuple[CommentedMap, str] | None) -> None:
    """The blank lines after one key's line go after another's."""
    if target is not None and not (target[0] is source[0] and target[1] == source[1]):
        _give_blank_lines(target, _take_blank_lines(source))


def _last_leaf(node: Any) -> tuple[CommentedMap, str] | None:
    """The innermost last (mapping, key) of a block, where a trailing comment goes."""
    found = None
    while isinstance(node, CommentedMap) and node:
        key = list(node)[-1]
        found = (node, key)
        node = node[key]
    return found


class ConfigFile:
    """One config file, edited under a lock on its directory (one editor at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def edit(self, change: Callable[[Document, Config], None]) -> Config:
        """Apply `change(document, current config)`, validate, write; return the new config.

        Raises ConfigError (naming the key) and leaves the file byte for byte as it was.
        """
        with self._locked():
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read: {exc.strerror}", file=str(self.path)) from None
            current = config_loader.parse(text, str(self.path))
            try:
                root = _yaml().load(text)
            except YAMLError as exc:
                raise ConfigError(f"cannot edit: {exc}", file=str(self.path)) from None
            document = Document(root if isinstance(root, CommentedMap) else CommentedMap())
            try:
                change(document, current)
            except ConfigError as exc:
                if exc.file:
                    raise
                raise ConfigError(exc.reason, file=str(self.path), key=exc.key) from None
            new_text = document.dump()
            config = config_loader.parse(new_text, str(self.path))
            if new_text != text:
                write_atomic(self.path, new_text)
            return config


# --- the edits --------------------------------------------------------------------------------

def set_values(changes: dict[str, str]) -> Callable[[Document, Config], None]:
    def change(doc: Document, _: Config) -> None:
        for key, text in changes.items():
            if not key or key.startswith(".") or key.endswith("."):
                raise ConfigError("not a setting", key=key)
            doc.set(split_key(key), parse_value(key, text))
    return change


def add_alias(domain: str) -> Callable[[Document, Config], None]:
    name = domain_name(domain, "domains.local.aliases")

    def change(doc: Document, current: Config) -> None:
        if name in current.local_domains:
            raise ConfigError(f"{name} is already a local domain", key="domains.local.aliases")
        doc.sequence(ALIASES).append(name)
    return change


def set_default(domain: str) -> Callable[[Document, Config], None]:
    """The new default; the old one stays local as an alias, as IIS does."""
    name = domain_name(domain, "domains.local.default")

    def change(doc: Document, current: Config) -> None:
        old = current.default_domain
        if name == old:
            return
        doc.remove_item(ALIASES, name)
        doc.sequence(ALIASES).append(str(old))
        doc.set(["domains", "local", "default"], name)
    return change


def remove_domain(domain: str) -> Callable[[Document, Config], None]:
    name = domain_name(domain)

    def change(doc: Document, current: Config) -> None:
        if name == current.default_domain:
            raise ConfigError(f"{name} is the default domain: make another domain the default "
                              "first", key="domains.local.default")
        if name in current.domains.local.aliases:
            doc.remove_item(ALIASES, name)
        elif not doc.delete(["domains", "remote", name]):
            raise ConfigError(f"{name} is neither a local nor a configured remote domain",
                              key="domains")
    return change


def rename_domain(old: str, new: str) -> Callable[[Document, Config], None]:
    before, after = domain_name(old), domain_name(new)

    def change(doc: Document, current: Config) -> None:
        if before == current.default_domain:
            doc.set(["domains", "local", "default"], after)
        elif before in current.domains.local.aliases:
            doc.remove_item(ALIASES, before)
            doc.sequence(ALIASES).append(after)
        elif before in current.domains.remote:
            doc.rename(["domains", "remote", before], after)
        else:
            raise ConfigError(f"{before} is not a configured domain", key="domains")
    return change


def set_remote(domain: str, tls: str | None = None,
               smarthost: str | None = None) -> Callable[[Document, Config], None]:
    """Settings of one remote domain; None leaves a setting as it is, "" clears smarthost."""
    name = domain_name(domain, "domains.remote")

    def change(doc: Document, _: Config) -> None:
        entry = doc.section(["domains", "remote", name])
        if tls is not None:
            entry["tls"] = tls
        if smarthost is not None:
            entry["smarthost"] = smarthost or None
    return change
