"""Shared fixtures: tiny randomly initialised models of each supported architecture, and the
embedded SmolLM2 model (loaded once per test session, converted weights cached)."""

from __future__ import annotations

import os

import pytest
import torch

#: Architectures the engine promises to handle, as tiny configs (no download).
TINY_ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"]


def tiny_config(arch: str, vocab: int = 96, layers: int = 6):
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=16, **common)
    if arch == "mistral":
        return tf.MistralConfig(sliding_window=24, **common)  # window smaller than the test sequences
    if arch == "phi3":
        return tf.Phi3Config(**common)
    if arch == "gemma2":
        return tf.Gemma2Config(head_dim=16, sliding_window=20, **common)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=20, sliding_window_pattern=2, **common)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, vocab: int = 96, layers: int = 6, scale: float = 4.0):
    """A random tiny model whose distributions are peaked enough for drafts to be accepted.

    Random init gives near-uniform next-token distributions; scaling the output head sharpens them
    so the tests exercise long accepted drafts as well as rejections.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, vocab=vocab, layers=layers)
    cfg._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def wide_tiny_model(arch: str, seed: int = 0, **overrides: object):
    """A tiny model whose q/k/v have 128/64/64 rows (two heads of 64, one key head): whole blocks of
    PyTorch's int4 packing, so ``quantize`` stacks them at int4 too (the narrow models' k/v have 32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 128, 2, 1, 64
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


class CharTokenizer:
    """A minimal tokenizer for tiny models: one token per character (mod vocab)."""

    chat_template = None
    eos_token_id = None
    pad_token_id = None

    def __init__(self, vocab: int = 96) -> None:
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": [ord(c) % self.vocab for c in text]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + (i % 90)) for i in ids)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct as a SwiftEngine (fp32, CPU), shared with the adapters' engine cache."""
    from swift_integrations.engine_cache import get_engine

    return get_engine(None, None, "cpu", "float32")


@pytest.fixture()
def own_measurements(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """For tests of the measuring itself: this test measures for itself, in a folder of its own (the suite
    otherwise shares one, see :func:`pytest_configure`; a user's machine keeps one in its cache)."""
    monkeypatch.setenv("SWIFT_MEASUREMENT_DIR", str(tmp_path / "own-measurements"))


@pytest.fixture(autouse=True, scope="module")
def _models_released_after_each_module():
    """Unload what a test module loaded through the adapters' engine cache, so the suite's memory stays
    bounded: every cached engine but the session's embedded one (:func:`smol`), which stays shared."""
    yield
    import gc

    from swift_integrations import engine_cache

    shared = engine_cache.get_engine_if_loaded(None, None, "cpu", "float32")
    for engine in engine_cache.loaded_engines():
        if engine is not shared:
            engine_cache.release_engine(engine)
    gc.collect()


def pytest_configure(config):
    # the cores are shared among pytest-xdist's workers (make test runs one per core): more torch
    # threads than cores makes OpenMP threads spin against each other, many times slower
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(2, (os.cpu_count() or 1) // workers))
    torch.set_num_threads(threads)
    if workers > 1:  # and the processes tests start (notebook kernels, a second engine process) share them too
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # One folder of measurements (pass costs, kernel choice) for the whole run, the workers' included (they
    # inherit the controller's environment): the many scratch stores of the suite then measure each model
    # once, not once per store (which cost the suite ~170 s). Tests of the measuring itself unset it.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        import tempfile

        os.environ["SWIFT_MEASUREMENT_DIR"] = tempfile.mkdtemp(prefix="swift-test-measurements-")
    # Tests never read or write the user's profiles; converted model weights stay in the user
    # cache (converting the embedded GGUF once per machine is the point of that cache).
    if "SWIFT_PROFILE_DIR" not in os.environ or not os.environ.get("SWIFT_TEST_KEEP_PROFILE_DIR"):
        import tempfile

        os.environ["SWIFT_PROFILE_DIR"] = tempfile.mkdtemp(prefix="swift-test-profiles-")


def finishes_in_time(fn, timeout: float = 120.0):
    """Run ``fn`` in a thread and return its value; fail (instead of hanging the suite) if it blocks.

    ``timeout`` is a hang guard, generous on purpose (a busy machine is slow, never blocked): it
    tells a call that waits forever from one that returns, and is no speed check.

    For calls that must never block (a FIFO in the profile store, a paused stream elsewhere).
    """
    import threading

    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


def pytest_terminal_summary(terminalreporter) -> None:
    """The suite's peak memory: this process, and its largest child (an xdist worker, a server, a notebook)."""
    import resource

    own, child = (resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    terminalreporter.write_line(f"peak RSS: test process {own:.0f} MiB, largest child process {child:.0f} MiB")


#: Test files that take longest (measured with ``--durations``), run first: ``make test`` hands whole files
#: to its workers in collection order, so a long file collected last would run alone at the end while
#: the other core idles (the Ray Serve file mostly waits on its replicas starting).
LONGEST_FIRST = [
    "test_ray_serve.py",
    "test_wheel_install.py",
    "test_prebuilt_agents.py",
    "test_bench.py",
    "test_notebooks.py",
    "test_low_precision.py",
    "test_langchain_standard.py",
    "test_embedded_exactness.py",
    "test_constraints.py",
    "test_search_profiles.py",
    "test_loading.py",
    "test_server_fuzz.py",
    "test_langchain_chat.py",
]


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
