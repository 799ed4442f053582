"""A receiver: SMTP sessions on the listening sockets its supervisor bound (or on its own, in
the single-process relay), each message committed to Drop/Queue by the intake before its 250
(the queue manager sees new Queue entries through inotify)."""

from __future__ import annotations

import socket

from relay.core.config import Config
from relay.core.process import ChildSpec, Role, Services
from relay.receiver.anvil_client import AnvilClient
from relay.receiver.smtpd import SmtpServer


class Receiver:
    """The SMTP listener as a service. `sockets`: bound by the supervisor (None: it binds
    smtp.listen itself); `anvil`: the supervisor's shared Anvil (None: its own)."""

    def __init__(self, services: Services, sockets: list[socket.socket] | None = None,
                 anvil: AnvilClient | None = None) -> None:
        self.smtpd = SmtpServer(services.config, services.intake, services.events)
        self.sockets = sockets
        self.link = anvil
        if anvil is not None:  # limits count the connections of every receiver
            self.smtpd.anvil = anvil  # type: ignore[assignment]
            self.smtpd.announce_stress = False  # the supervisor logs stress mode, once

    async def start(self) -> None:
        await self.smtpd.start(self.sockets)
        if self.link is not None:  # idle sessions follow stress mode as the relay enters it
            self.link.listen(self.smtpd.follow_stress)

    async def stop(self) -> None:
        if self.link is not None:
            self.link.close()
        await self.smtpd.stop()

    def reconfigure(self, config: Config) -> None:
        self.smtpd.reconfigure(config)


class ReceiverProcess(Role):
    def build(self, spec: ChildSpec) -> Receiver:
        anvil = AnvilClient(spec.anvil, spec.config.smtp, spec.receivers) \
            if spec.anvil is not None else None
        return Receiver(self.services, [socket.socket(fileno=fd) for fd in spec.sockets], anvil)
