# Quick start: `make demo` (runs the example project) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE := examples/webapp

.PHONY: demo test lint bench clean demo-stop

$(BIN)/taskmux: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/taskmux
	$(BIN)/taskmux --project $(EXAMPLE) start
	$(BIN)/taskmux --project $(EXAMPLE) status
	@echo
	@echo "Watch it live:     tmux attach -t taskmux-example   (or: $(BIN)/taskmux --project $(EXAMPLE) attach)"
	@echo "Read its output:   $(BIN)/taskmux --project $(EXAMPLE) logs"
	@echo "Register with an agent (Claude Code):"
	@echo "  claude mcp add taskmux -- $(abspath $(BIN))/taskmux-mcp --project $(abspath $(EXAMPLE))"
	@echo "Other clients:     $(BIN)/taskmux --project $(EXAMPLE) mcp-config codex|cursor|vscode|..."
	@echo "Stop it:           $(BIN)/taskmux --project $(EXAMPLE) down   (stop, remove the session, release ports)"

demo-stop: $(BIN)/taskmux
	$(BIN)/taskmux --project $(EXAMPLE) down

lint: $(BIN)/taskmux
	$(BIN)/ruff check taskmux_mcp tests bench
	$(BIN)/ruff format --check taskmux_mcp tests bench
	$(BIN)/mypy

test: $(BIN)/taskmux lint
	$(BIN)/pytest -q -n 4

bench: $(BIN)/taskmux
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
