"""`python -m taskmux_mcp` runs the companion CLI."""

from .control import main

main()
