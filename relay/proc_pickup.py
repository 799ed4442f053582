"""The Pickup taker process: watches Pickup/ and commits each file through the intake."""

from __future__ import annotations

import signal

from relay.config import Config
from relay.pickup import PickupWatcher
from relay.proc_child import ChildSpec, Role


class PickupTaker(Role):
    def __init__(self, spec: ChildSpec) -> None:
        super().__init__(spec)
        self.pickup = PickupWatcher(self.config, self.store, self.intake, self.events)

    async def start_services(self) -> None:
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # the read-lease probe's signal
        await self.pickup.start()

    async def stop_services(self) -> None:
        await self.pickup.stop()

    def reconfigure(self, config: Config) -> None:
        self.pickup.config = config


ROLE = PickupTaker
