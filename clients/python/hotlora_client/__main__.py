"""`python -m hotlora_client`: the terminal chat (`hotlora-chat`)."""

import sys

from .terminal import main

sys.exit(main())
