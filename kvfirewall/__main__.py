"""Entry point for `python -m kvfirewall`."""

import sys

from kvfirewall.cli import main

sys.exit(main())
