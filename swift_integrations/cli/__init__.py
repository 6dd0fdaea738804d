"""The ``swift-accel`` command line; the typer app is :data:`swift_integrations.cli.app.app`.

Nothing is imported here, so importing the package stays free of typer and rich until a command runs.
"""
