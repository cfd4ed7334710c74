# Quick start: `make demo` (runs the example project) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE := examples/webapp

.PHONY: demo test lint bench clean demo-stop

# setuptools' "Editable installation" notice is information only; the rest of pip's output stays.
PIP := PYTHONWARNINGS="ignore:Editable installation" PIP_DISABLE_PIP_VERSION_CHECK=1 \
	$(BIN)/pip --quiet

$(BIN)/taskmux: pyproject.toml
	@echo "creating $(VENV) and installing taskmux-mcp with its runtime dependencies (about a minute)…"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install -e .
	@touch $@

$(VENV)/.test-tools: $(BIN)/taskmux
	@echo "installing the test tools into $(VENV): pytest, ruff, mypy, hypothesis, selenium…"
	@$(PIP) install -e '.[test]'
	@touch $@

demo: $(BIN)/taskmux
	@echo "starting examples/webapp: setup, then api (once setup has exited 0), then worker…"
	@$(BIN)/taskmux --project $(EXAMPLE) start
	@echo
	@$(BIN)/taskmux --project $(EXAMPLE) status
	@echo
	@echo "Watch it live:     tmux attach -t taskmux-example   (or: $(BIN)/taskmux --project $(EXAMPLE) attach)"
	@echo "Read its output:   $(BIN)/taskmux --project $(EXAMPLE) logs"
	@echo "Register with an agent (Claude Code):"
	@echo "  claude mcp add taskmux -- $(abspath $(BIN))/taskmux-mcp --project $(abspath $(EXAMPLE))"
	@echo "Other clients:     $(BIN)/taskmux --project $(EXAMPLE) mcp-config codex|cursor|vscode|..."
	@echo "Stop it:           make demo-stop   (= $(BIN)/taskmux --project $(EXAMPLE) down: stop, remove the session, release ports)"

demo-stop: $(BIN)/taskmux
	$(BIN)/taskmux --project $(EXAMPLE) down

lint: $(VENV)/.test-tools
	$(BIN)/ruff check taskmux_mcp tests bench
	$(BIN)/ruff format --check taskmux_mcp tests bench
	$(BIN)/mypy

test: $(VENV)/.test-tools lint
	$(BIN)/pytest -q -n 4

bench: $(BIN)/taskmux
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
