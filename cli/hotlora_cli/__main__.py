"""`python -m hotlora_cli`: the `hotlora` command where its console script is not installed."""

import sys

from .main import main

sys.exit(main())
