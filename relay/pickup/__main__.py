"""`python -m relay.pickup`: the Pickup taker process, started by the supervisor
(its spec comes on stdin: relay/core/process.py)."""

import sys

from relay.core.process import main
from relay.pickup.process import PickupProcess

sys.exit(main(PickupProcess))
