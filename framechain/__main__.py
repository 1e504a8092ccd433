"""``python -m framechain``: the framechain command."""

import sys

from framechain.client.cli import main

sys.exit(main())
