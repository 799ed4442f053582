"""`python -m relay.receiver`: a receiver process: SMTP sessions on the sockets the supervisor bound, started by the supervisor
(its spec comes on stdin: relay/core/process.py)."""

import sys

from relay.core.process import main
from relay.receiver.process import ReceiverProcess

sys.exit(main(ReceiverProcess))
