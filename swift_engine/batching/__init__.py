"""Continuous batching: calls in flight at once share the model's passes (see :mod:`swift_engine.batching.batcher`)."""
