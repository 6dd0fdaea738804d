"""The engine's own llama/qwen2 classes (model/llama_family.py): bitwise transformers' classes, without their import.

A checkpoint folder loaded into them must be the model ``from_pretrained`` gives -- the same parameters in the
same order (hence the same fingerprint and profiles), the same tokens from the engine's passes (the fast loop,
the scripted step, and the modules' own forward while hooks sit on them) and from transformers' ``generate`` --
and a later process loading the embedded model must not import transformers' modeling code at all.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.loading import model_fingerprint
from swift_engine.loading.own_classes import load_checkpoint
from swift_engine.model.llama_family import CausalLM, supported_config
from tests.conftest import CharTokenizer, tiny_model

PROMPT = "the quick brown fox jumps over the lazy dog " * 3


def _folder(tmp_path: pathlib.Path, arch: str, tied: bool = False) -> pathlib.Path:
    model = tiny_model(arch, seed=3)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    folder = tmp_path / arch
    model.save_pretrained(folder)
    return folder


def _transformers(folder: pathlib.Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()


def _tokens(model, **config) -> list[int]:
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(**config))
    return list(engine.generate(PROMPT, max_new_tokens=24, step_key="t").token_ids)


@pytest.mark.parametrize(
    ("arch", "dtype", "tied"),
    [
        ("llama", torch.float32, False),
        ("llama", torch.float32, True),
        ("llama", torch.bfloat16, False),
        ("qwen2", torch.float32, False),
        ("qwen2", torch.bfloat16, False),
    ],
)
def test_a_folder_loads_bitwise_the_transformers_model(tmp_path, arch, dtype, tied) -> None:
    folder = _folder(tmp_path, arch, tied)
    ours, theirs = load_checkpoint(folder, dtype, "sdpa"), _transformers(folder, dtype)
    assert isinstance(ours, CausalLM)
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert list(mine) == list(other)
    assert all(torch.equal(mine[k], other[k]) and mine[k].dtype == other[k].dtype for k in mine)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    assert model_fingerprint(ours) == model_fingerprint(theirs)
    config = pickle.loads(pickle.dumps(ours.config))  # as a process pool or Ray would pass it
    assert config.to_dict()["model_type"] == arch and config.hidden_size == theirs.config.hidden_size
    # the engine's passes: speculative and plain, every token the same
    assert _tokens(ours) == _tokens(theirs)
    assert _tokens(ours, speculative=False) == _tokens(theirs, speculative=False)
    # transformers' forward and generate on the same weights (the benchmark's baseline, perplexity), after
    # what load_model's last step does to both: every floating tensor cast, the rotary tables too
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    ids = torch.tensor([CharTokenizer()(PROMPT)["input_ids"]])
    assert torch.equal(ours(ids).logits, theirs(ids).logits)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(ours.generate(ids, **kwargs), theirs.generate(ids, **kwargs))


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_quantized_it_is_bitwise_the_quantized_transformers_model(tmp_path, arch, precision) -> None:
    """What a weight-only load does to either class (cast to bfloat16, quantize), then the same numbers."""
    from swift_engine.kernels.quantize import int4_available, quantize

    if precision == "int4" and not int4_available():
        pytest.skip("this PyTorch build lacks the int4 CPU kernel")
    folder = _folder(tmp_path, arch)
    ours = load_checkpoint(folder, torch.float32, "sdpa").to(torch.bfloat16)
    theirs = _transformers(folder, torch.float32).to(torch.bfloat16)
    assert quantize(ours, precision) == quantize(theirs, precision)
    assert model_fingerprint(ours) == model_fingerprint(theirs)
    ids = torch.tensor([CharTokenizer()(PROMPT)["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert _tokens(ours) == _tokens(theirs)


def test_with_hooks_the_modules_own_forward_gives_the_same_tokens(tmp_path) -> None:
    """A hook on a module sends the runner through the decoder's own forward (fast_forward.py bypasses hooks)."""
    folder = _folder(tmp_path, "qwen2")
    ours, theirs = load_checkpoint(folder, torch.float32, "sdpa"), _transformers(folder, torch.float32)
    expected = _tokens(theirs)
    calls: list[int] = []
    handle = ours.model.layers[0].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert _tokens(ours) == expected
    finally:
        handle.remove()
    assert calls  # the hook ran: the modules' path was taken


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"model_type": "gemma2"}, "model type"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rotary"),
        ({"hidden_act": "gelu"}, "activation"),
        ({"layer_types": ["sliding_attention"] * 6}, "sliding"),
        ({"rms_norm_eps": None}, "lacks"),
    ],
)
def test_configs_it_does_not_reproduce_are_left_to_transformers(tmp_path, change, why) -> None:
    import json

    folder = _folder(tmp_path, "llama")
    values = json.loads((folder / "config.json").read_text())
    values.update(change)
    values = {k: v for k, v in values.items() if v is not None}
    assert why in (supported_config(values) or "")
    (folder / "config.json").write_text(json.dumps(values))
    assert load_checkpoint(folder, torch.float32, "sdpa") is None
    assert supported_config(json.loads((_folder(tmp_path / "b", "llama") / "config.json").read_text())) is None


def test_eager_attention_is_left_to_transformers(tmp_path) -> None:
    assert load_checkpoint(_folder(tmp_path, "llama"), torch.float32, "eager") is None


def test_a_later_process_imports_no_transformers_modeling_code(smol) -> None:
    """The embedded model's conversion is on disk (``smol`` made sure): a new process answering with it must
    not import transformers' model classes, their activations, masks or torch._dynamo (~2 s per process)."""
    script = (
        "import sys\n"
        "from swift_engine import SwiftEngine\n"
        "engine = SwiftEngine.from_pretrained(None, dtype='float32')\n"
        "engine.generate('Hi', max_new_tokens=4)\n"
        "heavy = [m for m in ('transformers.modeling_utils', 'transformers.activations',\n"
        "         'transformers.masking_utils', 'torch._dynamo') if m in sys.modules]\n"
        "print(type(engine.model).__module__, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "swift_engine.model.llama_family []"
