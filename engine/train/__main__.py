"""`python -m engine.train <stage> --spec spec.json`: one training stage in a process of its own."""

import sys

from engine.train.child import main

sys.exit(main())
