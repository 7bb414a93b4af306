# Two commands matter on a fresh machine: `make demo` and `make test`. Everything installs itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint demo bench bench-quick airflow clean stop

install: $(STAMP)

# Reinstalls only when the project's metadata or the lock changes (a no-op when up to date).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check reconciler dags tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

demo: install
	bash scripts/demo.sh

airflow: install
	bash scripts/airflow.sh

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

stop:
	-$(BIN)/reconciler db stop

clean: stop
	rm -rf .reconciler
