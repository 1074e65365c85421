"""`python -m batchroute.sim`: serve the simulator until SIGTERM or SIGINT."""

import sys

from batchroute.sim import main

sys.exit(main())
