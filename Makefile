# The two commands of the README. Both set everything up on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup bench

setup:
	@bash scripts/setup.sh

## A SWIFT-accelerated chain on the embedded model: the answer, and its speed-up statistics.
demo: setup
	@$(PY) examples/demo.py

## The whole test suite (what CI runs).
test: setup
	@$(PY) -m pytest -q

bench: setup
	@$(VENV)/bin/swift-bench
