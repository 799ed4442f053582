"""`python -m relay.queue`: the queue manager process, started by the supervisor
(its spec comes on stdin: relay/core/process.py)."""

import sys

from relay.core.process import main
from relay.queue.process import QueueProcess

sys.exit(main(QueueProcess))
