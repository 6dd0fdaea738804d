"""``swift-bench``: the benchmarks of SWIFT against plain decoding, pipelines and the HTTP server.

The command line is :mod:`swift_integrations.bench.command`; its docstring maps the other modules.
Nothing is imported here, so that ``swift-accel`` can register the command without loading torch.
"""
