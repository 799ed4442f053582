"""`python -m relay.cli`: the `mailroot` command."""

import sys

from relay.cli import main

sys.exit(main())
