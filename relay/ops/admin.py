"""The operator API: everything the console and the CLI can see and do, as one class, Admin,
made of one module per job: reading the folders (queries.py), the actions on messages
(actions.py) and requeue (requeue.py), editing the config (config_edits.py). Here: what
they share, the audit log, and `mailroot route` and `probe` for the console.

It works on the folders alone, so it serves the console with an embedded relay and a separate
process beside a running `mailroot serve` alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.logrotate import Rotation
from relay.ops.actions import Actions
from relay.ops.audit import AuditEntry, AuditLog
from relay.ops.config_edits import ConfigEdits
from relay.ops.queries import Queries
from relay.ops.requeue import Requeues

if TYPE_CHECKING:
    from relay.core.intake import Intake
    from relay.ops.explain import Explanation
    from relay.ops.probe import Probe, Step


class Admin(Actions, Requeues, ConfigEdits, Queries):
    """Operator actions on one mailroot."""

    def __init__(self, config: Config, wait: float = 2.0) -> None:
        super().__init__(config)
        self.audit_log = AuditLog(self.store.log_dir, Rotation.of(config.log))
        self.events = EventLog(self.store.log_dir, stream=None,
                               rotation=Rotation.of(config.log))
        self.wait = wait  # how long an action waits for a message the relay is working on

    @functools.cached_property
    def intake(self) -> Intake:
        """What requeue passes messages through again (and config edits reconfigure); made on first use, so a command that
        only reads (a listing of a million) starts without the routing and DKIM modules."""
        from relay.core.intake import Intake

        return Intake(self.config, self.store, signing=False)

    def audit(self) -> list[AuditEntry]:
        return self.audit_log.entries()

    # --- where mail goes (`mailroot route` / `probe`, for the console) ---

    async def route(self, address: str) -> tuple[Explanation, list[str]]:
        """What the relay would do with mail to `address`, and the same as lines of text;
        raises explain.BadAddress."""
        from relay.ops import explain

        result = await explain.explain(self.config, address)
        return result, explain.render(result)

    def prober(self, on_step: Callable[[Step], None]) -> Probe:
        """A probe of an address's first hop (`check`) or a test message (`send`)."""
        from relay.ops.probe import Probe  # loads cryptography: only when probing

        return Probe(self.config, on_step)
