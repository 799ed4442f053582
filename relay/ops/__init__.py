"""The operator's side of the relay, run by the `mailroot` commands and the console (never by
a process of a running relay): queries of the folders, actions on messages, editing the
config and the domains, route and probe, listings and summaries, health.

It may import every layer beneath it. The console imports only this package: the names below
are what it needs of the layers beneath (the config's types, the folders, the event log,
the relay lock), so it never reaches past the operator API; relay.ops.running starts a relay.
"""

from relay.core.config import (
    PARSED_TYPES,
    Config,
    ConfigError,
    Domain,
    Duration,
    HostPort,
    TlsPolicy,
)
from relay.core.events import LOG_NAME, LogFollower, read_rotated
from relay.core.folderstats import all_usage, usage_table
from relay.core.relay_lock import AlreadyRunning, lock_holder
from relay.core.store import BADMAIL, DROP, FOLDERS, HOLD, MARKER, PICKUP, QUEUE, TRASH
from relay.ops.config_keys import key_paths

__all__ = ["BADMAIL", "DROP", "FOLDERS", "HOLD", "LOG_NAME", "MARKER", "PARSED_TYPES", "PICKUP",
           "QUEUE", "TRASH", "AlreadyRunning", "Config", "ConfigError", "Domain", "Duration",
           "HostPort", "LogFollower", "TlsPolicy", "all_usage", "key_paths", "lock_holder",
           "read_rotated", "usage_table"]
