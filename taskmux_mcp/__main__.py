"""`python -m taskmux_mcp` runs the companion CLI."""

import sys

from .cli import main

sys.exit(main())
