"""Tooling built on the engine: the ``swift-accel`` command line and the ``swift-bench`` benchmark.

These modules are users of the core, like the integrations: they import ``swift_engine``'s
modules, and the core never imports them (nothing outside ``swift_engine/tools/`` may), so the
engine stays free of CLI frameworks, report formatting and the benchmark's prompt sets
(``tools/prompts/*.json``, package data). Import the submodules directly
(``swift_engine.tools.bench``, ``swift_engine.tools.cli``); this package exports nothing, so that
importing one tool does not pay for the others.
"""
