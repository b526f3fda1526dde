"""`python -m hotlora_trainer ...` is `hotlora train ...` (and what `accelerate launch -m` runs)."""

import sys

from .cli import main

sys.exit(main())
