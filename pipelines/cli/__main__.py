"""`python -m pipelines.cli ...`: the `tuneline` command without its console script (as the tests start it)."""

import sys

from pipelines.cli import main

sys.exit(main())
