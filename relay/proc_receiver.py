"""A receiver process: SMTP sessions on the listening sockets its supervisor bound, each
message committed to Drop/Queue by the intake before its 250 (the queue manager sees new
Queue entries through inotify)."""

from __future__ import annotations

import socket

from relay.anvil_link import AnvilClient
from relay.config import Config
from relay.proc_child import ChildSpec, Role
from relay.smtpd import SmtpServer


class Receiver(Role):
    def __init__(self, spec: ChildSpec) -> None:
        super().__init__(spec)
        self.smtpd = SmtpServer(self.config, self.intake, self.events)
        self.link: AnvilClient | None = None
        if spec.anvil is not None:  # limits count the connections of every receiver
            self.link = AnvilClient(spec.anvil, self.config.smtp, spec.receivers)
            self.smtpd.anvil = self.link  # type: ignore[assignment]
            self.smtpd.announce_stress = False  # the supervisor logs stress mode, once

    async def start_services(self) -> None:
        await self.smtpd.start([socket.socket(fileno=fd) for fd in self.spec.sockets])
        if self.link is not None:  # idle sessions follow stress mode as the relay enters it
            self.link.listen(self.smtpd.follow_stress)

    async def stop_services(self) -> None:
        if self.link is not None:
            self.link.close()
        await self.smtpd.stop()

    def reconfigure(self, config: Config) -> None:
        self.smtpd.reconfigure(config)


ROLE = Receiver
