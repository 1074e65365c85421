"""`python -m batchroute` is the `batchroute` command."""

from batchroute.cli import main

raise SystemExit(main())
