"""The Pickup taker process: watches Pickup/ and commits each file through the intake."""

from __future__ import annotations

import signal

from relay.core.process import ChildSpec, Role
from relay.pickup.watcher import PickupWatcher


class PickupProcess(Role):
    def build(self, spec: ChildSpec) -> PickupWatcher:
        s = self.services
        return PickupWatcher(s.config, s.store, s.intake, s.events)

    async def start_service(self) -> None:
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # the read-lease probe's signal
        await self.service.start()
