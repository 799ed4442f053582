"""Running a relay from an operator's tool (the console's embedded relay): the one form or
the other as the config asks (relay.supervisor), and the errors a start can end in."""

from relay.receiver.connection import ListenError
from relay.supervisor.single import Relay
from relay.supervisor.supervisor import Supervisor, make_relay

__all__ = ["ListenError", "Relay", "Supervisor", "make_relay"]
