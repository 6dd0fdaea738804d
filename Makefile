# The two commands of the README. Both set everything up on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup bench lint

setup:
	@bash scripts/setup.sh

## A SWIFT-accelerated chain on the embedded model: the answer, and its speed-up statistics.
demo: setup
	@$(PY) examples/demo.py

## The whole test suite (what CI runs, after `make lint`).
test: setup
	@$(PY) -m pytest -q

bench: setup
	@$(VENV)/bin/swift-bench

## Lint (ruff: pyflakes, isort, line length) and types (mypy on swift_engine/); configured in pyproject.toml.
lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy
