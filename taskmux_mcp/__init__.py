"""taskmux-mcp: run and watch a project's dev tasks in tmux, for LLM agents, humans and editors."""

__version__ = "0.1.0"
