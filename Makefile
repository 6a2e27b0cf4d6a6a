# The README's two commands: `make demo` brings the platform up, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: install demo demo-down status test check lint

install:
	deploy/testbed/install.sh

demo: install
	$(VENV)/slb dev up

demo-down:
	$(VENV)/slb dev down

status:
	$(VENV)/slb dev status

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

check: lint
	$(VENV)/pytest

test: install
	$(MAKE) check
