# The README's commands. Each sets everything up on a fresh machine first (scripts/setup.sh, idempotent).
#   make demo    the main job: a SWIFT-accelerated chain on the embedded model, its answer and speed-up
#   make test    the whole test suite: what CI runs (.ci/run), after `make lint`; run it before committing
#   make check   lint and the fast tests (no `slow` marker): for iterating, a few minutes
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test check setup bench lint

setup:
	@bash scripts/setup.sh

## A SWIFT-accelerated chain on the embedded model: the answer, and its speed-up statistics.
demo: setup
	@$(PY) examples/demo.py

## The whole test suite (what CI runs, after `make lint`).
test: setup
	@$(PY) -m pytest -q -n auto --dist loadfile

## Lint and types, then the tests not marked slow (those that load no real model and run no long generation).
check: lint
	@$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

bench: setup
	@$(VENV)/bin/swift-bench

## Lint (ruff: pyflakes, isort, line length) and types (mypy on both packages); configured in pyproject.toml.
lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy
