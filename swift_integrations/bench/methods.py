"""The methods ``swift-bench`` compares, and the role each plays in the report.

Every prompt is decoded greedily by these methods:

* ``hf``: ``transformers``' ``model.generate(do_sample=False)`` on the same token ids;
* ``hf_lookup``: ``transformers``' prompt-lookup decoding (``prompt_lookup_num_tokens=10``);
* ``llama_cpp``: llama.cpp on the same GGUF file and prompt tokens (``--baseline llama.cpp`` only);
* ``plain``: the engine's own loop with ``speculative=False`` (same code path, no drafting);
* ``swift_cold``: SWIFT on the first pass over a class's prompts, from a reset profile (the layer-set
  search runs during these calls);
* ``swift_warm``: SWIFT after ``--warmup-calls`` more calls per class have refined the profile.

The warm-up calls between the two SWIFT phases are recorded as ``swift_warmup`` runs. Every
method's token ids are compared with the reference's: greedy SWIFT must reproduce them exactly.
These names are shared by the measuring (:mod:`swift_integrations.bench.measure`), the run
(:mod:`swift_integrations.bench.runner`), its summary and its report, so they live on their own.
"""

from __future__ import annotations

#: Every method, in report order.
METHODS = ("hf", "hf_lookup", "llama_cpp", "plain", "swift_cold", "swift_warm")
#: What SWIFT's speed-ups are reported against.
BASELINES = ("hf", "plain", "hf_lookup", "llama_cpp")
#: Baselines whose tokens may differ from hf's without it being this engine's fault: transformers'
#: prompt lookup (its own numerics) and llama.cpp (the GGUF file's own precision).
INEXACT_BASELINES = ("hf_lookup", "llama_cpp")
SWIFT_METHODS = ("swift_cold", "swift_warm")
#: Methods whose output must equal ``hf``'s (ours); a mismatch of ``hf_lookup`` is only a warning.
OWN_METHODS = ("plain", "swift_cold", "swift_warm")
#: Draft length of transformers' prompt lookup (the ``hf_lookup`` method).
PROMPT_LOOKUP_TOKENS = 10
