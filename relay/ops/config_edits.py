"""The operator's edits of the config file: settings, the local and remote domains, DKIM
keys (and the check of their DNS records). Each is one validated write, audited, and applied
to requeue's routing at once. A mixin of Admin (relay.ops.admin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from relay.core import config_loader
from relay.core.config import Config, ConfigError, RemoteDomain
from relay.ops.config_keys import describe

if TYPE_CHECKING:
    from types import ModuleType

    from relay.ops.dkim_keys import RecordCheck
    from relay.ops.settings import Document


class DomainList(NamedTuple):
    default: str
    aliases: list[str]
    remote: dict[str, RemoteDomain]


def _settings() -> ModuleType:
    """relay.ops.settings, which edits the config file with ruamel.yaml: loaded by the commands
    that change settings, not by every listing."""
    from relay.ops import settings

    return settings


class ConfigEdits:
    """Changes to the config file and the domains, and the DKIM keys it names."""

    def _current(self) -> Config:
        """The config as its file says now (another process may have changed it)."""
        return config_loader.load(self.config.source) if self.config.source else self.config

    def _edit(self, action: str, change: Callable[[Document, Config], None],
              **detail: object) -> Config:
        if not self.config.source:
            raise ConfigError("no config file to change: give one with -c FILE")
        config = _settings().ConfigFile(self.config.source).edit(change)
        self.config = config
        self.intake.reconfigure(config)
        entry = self.audit_log.append(action, [], **detail)
        self.events.emit("admin", action=action, user=entry.user, **entry.detail)
        return config

    def settings_get(self, key: str) -> str:
        """A setting's effective value, as `mailroot check` shows it."""
        for path, value, _ in describe(self._current()):
            if path == key:
                return value
        raise ConfigError("unknown setting (see mailroot check for the keys)", key=key)

    def settings_set(self, key: str, value_text: str) -> Config:
        return self.set_many({key: value_text})

    def set_many(self, changes: dict[str, str]) -> Config:
        """Several settings in one validated write; a bad value raises ConfigError naming
        its key and leaves the file untouched."""
        return self._edit("settings-set", _settings().set_values(changes), changes=changes)

    def domains(self) -> DomainList:
        config = self._current()
        return DomainList(config.default_domain, list(config.domains.local.aliases),
                          dict(config.domains.remote))

    def add_alias(self, domain: str) -> Config:
        """Another local domain: its mail goes to Drop."""
        return self._edit("domains-add-local", _settings().add_alias(domain), domain=domain)

    add_local = add_alias

    def set_default(self, domain: str) -> Config:
        """The new default local domain; the old default becomes an alias, as IIS does."""
        return self._edit("domains-set-default", _settings().set_default(domain), domain=domain)

    def remove_domain(self, domain: str) -> Config:
        return self._edit("domains-remove", _settings().remove_domain(domain), domain=domain)

    def rename_domain(self, old: str, new: str) -> Config:
        return self._edit("domains-rename", _settings().rename_domain(old, new), old=old, new=new)

    def set_remote(self, domain: str, tls: str | None = None,
                   smarthost: str | None = None) -> Config:
        """A remote domain's TLS policy and smart host (None: unchanged, "": no smart host)."""
        return self._edit("domains-set-remote", _settings().set_remote(domain, tls, smarthost),
                          domain=domain, tls=tls, smarthost=smarthost)

    # --- DKIM keys ---

    def add_dkim_key(self, domain: str, selector: str, key_file: str, algorithm: str) -> Config:
        """Sign `domain`'s mail with one more key (its file already written)."""
        from relay.ops import dkim_keys
        return self._edit("dkim-add-key", dkim_keys.add_key(domain, selector, key_file, algorithm),
                          domain=domain, selector=selector, key_file=key_file)

    def dkim_records(self, domain: str | None = None) -> list[RecordCheck]:
        """Whether each DKIM key's record is published in DNS and matches the key."""
        from relay.ops import dkim_keys
        return dkim_keys.check(self._current(), domain)
