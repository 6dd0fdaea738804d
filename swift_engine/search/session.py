"""One call's part in its step's layer-set search (:class:`SearchSession`).

The engine opens a session per call from the step's profile; the session tells the layer-skip
drafter which sublayers to skip now, runs search iterations between verification steps within the
call's overhead budget, and writes what it learned back to the step's profile when the call ends.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from swift_engine.config import SearchConfig
from swift_engine.kernels.costs import CostModel
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner
from swift_engine.search.layer_search import LayerSetSearch, score_candidate
from swift_engine.search.state import PLAIN, Candidate, SearchState, SkipChoice

if TYPE_CHECKING:
    from swift_engine.decoding.verification import Verdict
    from swift_engine.model.draft_head import DraftHead
    from swift_engine.results import GenerationStats
    from swift_engine.search.step_profiles import StepProfiles

#: the least share of the overhead budget a search keeps however little it could still gain (so a
#: step still reaches its stopping rules, a few iterations per call)
_MIN_BUDGET_SHARE = 0.1


class SearchSession:
    """One call's part in its step's layer-set search, and the skip choice it drafts with.

    Opened at the start of a call from the step's profile (:meth:`open`), it answers what the
    layer-skip drafter uses now (:attr:`choice`), runs search iterations between verification
    steps while the call's overhead budget allows (:meth:`maybe_search`), keeps the teacher targets
    those iterations score against (the full model's argmax after each committed token, fed by
    :meth:`observe`), and writes what was learned back to the profile (:meth:`close`).
    """

    def __init__(
        self,
        choice: SkipChoice,
        *,
        speculative: bool = True,
        state: SearchState | None = None,
        search: LayerSetSearch | None = None,
        probing: bool = False,
        profile: dict[str, Any] | None = None,
        bookkeeping: dict[str, Any] | None = None,
        costs: CostModel | None = None,
        config: SearchConfig | None = None,
        profiles: StepProfiles | None = None,
    ) -> None:
        self.choice = choice
        #: False: this call decodes plainly, with no drafter at all
        self.speculative = speculative
        #: the step's search state (``None``: nothing is learned or kept, e.g. search disabled)
        self.state = state
        self.search = search
        self.probing = probing
        #: the step's stored extras (drafters' per-step state), as read at the start of the call
        self.profile = profile or {}
        self.bookkeeping = bookkeeping or {}
        self.costs = costs
        self.config = config or SearchConfig()
        #: where :meth:`close` writes the step's state back (``None``: nothing is kept)
        self.profiles = profiles
        self.iterations = 0
        #: seconds spent searching in this call (bounded by ``SearchConfig.max_overhead``)
        self.search_s = 0.0
        #: seconds the last iteration took (the estimate for the next one)
        self.last_iteration_s = 0.0
        self._step = 0
        #: (search iterations, :meth:`LayerSetSearch.prospect`) when last computed
        self._prospect: tuple[int, float] | None = None
        # teacher-forcing material: committed tokens, and the full model's argmax after each of
        # them from position ``_targets_start`` on
        self._tokens: list[int] = []
        self._targets_start = 0
        self._targets: list[int] = []
        #: the prompt tail's targets, computed at the first iteration (None: computed, or none)
        self._tail_targets: Callable[[], list[int]] | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def plain_call(cls) -> SearchSession:
        """A call that does not speculate (``speculative=False``, or SWIFT disabled)."""
        return cls(PLAIN, speculative=False)

    @classmethod
    def fixed(cls, start: Candidate) -> SearchSession:
        """Search disabled: draft with the configured starting set, learn nothing."""
        return cls(SkipChoice.of(start))

    @classmethod
    def open(
        cls,
        profiles: StepProfiles,
        step_key: str,
        config: SearchConfig,
        costs: CostModel,
        num_layers: int,
        max_draft_len: int,
    ) -> SearchSession:
        """The step's session: its best set so far, and a search if it has not converged.

        A step that converged to plain decoding stays plain, but every ``reprobe_every_calls``-th
        call looks again (the step's content may have changed).
        """
        shared, record = profiles.checkout(step_key)
        # the call searches on its own copy: two calls of one step may run interleaved (two
        # streams read in turn), and each commits what it learned through the store's merge
        state = copy.deepcopy(shared)
        probing = False
        if record.plain and state.converged:
            since = int(record.extra.get("calls_since_probe", 0)) + 1
            if since < config.reprobe_every_calls:
                return cls(
                    PLAIN,
                    state=state,
                    profile=dict(record.extra),
                    bookkeeping={"calls_since_probe": since},
                    costs=costs,
                    config=config,
                    profiles=profiles,
                )
            probing = True
            state.converged = False
            state.since_improvement = 0
        search = None
        if not state.converged:
            seed = (state.iterations * 7919 + len(step_key)) % (2**31)
            search = LayerSetSearch(num_layers, config, costs, max_draft_len, seed=seed)
        return cls(
            # unknown or unprofitable so far: decode plainly
            SkipChoice.of(state.best, plain=state.best_speedup < 1.0),
            state=state,
            search=search,
            probing=probing,
            profile=dict(record.extra),
            bookkeeping={"calls_since_probe": 0},
            costs=costs,
            config=config,
            profiles=profiles,
        )

    @property
    def searching(self) -> bool:
        return self.search is not None and self.state is not None and not self.state.converged

    @property
    def teacher_window(self) -> int:
        """How many of the prompt's last positions need the full model's argmax (targets of the first iterations)."""
        return self.config.context_window if self.searching else 1

    # -- during the call ----------------------------------------------------------------------
    def start(self, prompt_ids: list[int], tail: int, tail_argmax: Callable[[], list[int]]) -> None:
        """The prompt is cached; ``tail_argmax()``: the full model's argmax after its last ``tail``
        tokens, asked for at the first search iteration only (a call that runs none never pays for it)."""
        self._tokens = list(prompt_ids)
        self._targets_start = len(prompt_ids) - tail
        self._targets = []
        self._tail_targets = tail_argmax

    def observe(self, root: int, verdict: Verdict) -> None:
        """``root`` and the accepted tokens are now cached, with the full model's argmax after each."""
        self._tokens.append(root)
        self._tokens.extend(verdict.accepted)
        self._targets.extend(verdict.path_argmax)

    def maybe_search(
        self, runner: ModelRunner, cache: SwiftKVCache, past: int, decode_start: float, head: DraftHead | None
    ) -> None:
        """One search iteration before every ``opt_interval``-th verification step, when affordable.

        Candidates are scored through the layer-skip drafter's ``head`` (its vocabulary subset), as
        they would draft.
        """
        due = self._step % self.config.opt_interval == 0
        self._step += 1
        if not (self.searching and due and self.affordable(decode_start)):
            return
        iteration_start = time.perf_counter()
        self._iterate(runner, cache, past, head.vocab() if head is not None else None)
        self.last_iteration_s = time.perf_counter() - iteration_start
        self.search_s += self.last_iteration_s

    def affordable(self, decode_start: float) -> bool:
        """Whether one more search iteration keeps this call within its overhead budget.

        The budget is ``max_overhead`` times the call's decoding time so far (the prefill is not
        decoding: a long prompt must not buy a search that its short reply then pays for), and the
        next iteration counts before it runs, so a reply too short to carry an iteration never
        starts one. The share shrinks as the search stagnates (halved after ``hopeless_after``
        iterations without improvement, a third after twice that, ...): the paper's stopping rule
        (``max_tolerance_iter`` stagnant iterations) can take many calls, and each further
        iteration is less likely to pay for itself. It shrinks too with what the search could still
        gain (:meth:`LayerSetSearch.prospect` over the better of plain decoding and the best set
        found): the whole budget from ``full_budget_gain`` on, in proportion below, down to a tenth.
        Measured on Qwen2.5-0.5B at int4, where even the best set gains little: searching on a full
        budget made warm calls slower than plain decoding (figures: docs/bench/measurements.md#search).
        """
        cfg = self.config
        stagnation = self.state.since_improvement if self.state is not None else 0
        share = cfg.max_overhead * cfg.hopeless_after / (cfg.hopeless_after + stagnation)
        if self.search is not None and self.state is not None:
            # and with what the search could still gain over what the step decodes at now
            if self._prospect is None or self._prospect[0] != self.state.iterations:
                self._prospect = (self.state.iterations, self.search.prospect(self.state))
            room = self._prospect[1] - max(1.0, self.state.best_speedup)
            share *= min(1.0, max(_MIN_BUDGET_SHARE, room / cfg.full_budget_gain))
        decoding = time.perf_counter() - decode_start - self.search_s
        assert self.costs is not None
        next_s = self.last_iteration_s or self.costs.verify(cfg.context_window)
        return self.search_s + next_s <= share * decoding

    def _iterate(self, runner: ModelRunner, cache: SwiftKVCache, past: int, vocab: torch.Tensor | None) -> None:
        """One iteration: score a candidate on the last committed tokens, keep it if it is the best."""
        state, search = self.state, self.search
        assert state is not None and search is not None
        first = max(self._targets_start, past - self.config.context_window)
        if past - first < 4:
            return
        if self._tail_targets is not None:  # the prompt tail's targets come first
            self._targets[:0] = self._tail_targets()
            self._tail_targets = None
        window = self._tokens[first:past]
        targets = self._targets[first - self._targets_start : past - self._targets_start]
        # the starting set is scored first
        cand = state.best if self.iterations == 0 and state.iterations == 0 else search.propose(state)
        score = score_candidate(runner, cache, past, window, targets, cand, vocab)
        if search.update(state, cand, score) or self.iterations == 0:
            self.choice = SkipChoice.of(state.best, plain=state.best_speedup < 1.0)
        self.iterations += 1

    # -- closing ------------------------------------------------------------------------------
    def close(self, step_key: str, stats: GenerationStats, tokens: int, extra: dict[str, Any]) -> None:
        """Report the call's choice and search in ``stats``; write the step's state back.

        ``extra``: the drafters' per-step state, stored with the profile.
        """
        choice = self.choice
        stats.mode = "plain" if choice.plain else "swift"
        stats.skip_attention, stats.skip_mlp = sorted(choice.attention), sorted(choice.mlp)
        st, profiles = self.state, self.profiles
        if st is None or profiles is None:
            return
        if self.probing:
            st.converged = True  # one call's look is the probe
        stats.search_ran = self.iterations > 0
        stats.search_iterations = self.iterations
        stats.profile_score = st.best_score
        stats.expected_speedup = st.best_speedup
        profiles.commit(
            step_key,
            st,
            plain=st.converged and st.best_speedup < 1.0,
            tokens=tokens,
            extra={**self.bookkeeping, **extra},
        )
