"""SWIFT's optimization phase: find, on the fly, which sublayers the draft should skip.

Each iteration proposes a skip set (random search around the best set or from scratch, and a
Bayesian-optimization proposal every ``bayes_interval`` iterations), scores it by drafting the
already generated tokens in parallel (teacher-forced: how often the draft's argmax equals the full
model's), and keeps the set with the best *expected speed-up* on this hardware. The paper fixes the
skip ratio; here the ratio is part of the search, because small models on CPUs pay off at lower
ratios (and sometimes not at all: then the step decodes plainly).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from swift_engine.config import SearchConfig
from swift_engine.kernels.costs import CostModel
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner

if TYPE_CHECKING:
    from swift_engine.decoding.verification import Verdict
    from swift_engine.drafters.layer_skip import DraftHead
    from swift_engine.results import GenerationStats
    from swift_engine.search.step_profiles import StepProfiles

logger = logging.getLogger(__name__)

#: Observations kept per step (for the Bayesian optimizer); older ones are dropped.
MAX_OBSERVATIONS = 300
#: the least share of the overhead budget a search keeps however little it could still gain (so a
#: step still reaches its stopping rules, a few iterations per call)
_MIN_BUDGET_SHARE = 0.1


@dataclass(frozen=True)
class Candidate:
    attention: frozenset[int]
    mlp: frozenset[int]

    def ratio(self, num_layers: int) -> float:
        return (len(self.attention) + len(self.mlp)) / (2 * num_layers)

    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted(self.attention)), tuple(sorted(self.mlp))


@dataclass(frozen=True)
class SkipChoice:
    """What the layer-skip drafter drafts with: the skipped sublayers, or nothing (``plain``)."""

    attention: frozenset[int]
    mlp: frozenset[int]
    plain: bool = False

    @classmethod
    def of(cls, cand: Candidate, plain: bool = False) -> SkipChoice:
        return cls(cand.attention, cand.mlp, plain)


#: No layer-skip drafts.
PLAIN = SkipChoice(frozenset(), frozenset(), plain=True)


@dataclass
class SearchState:
    """What the search knows about one step key; persisted in its profile record."""

    best: Candidate
    best_score: float = 0.0
    best_speedup: float = 0.0
    best_draft_len: int = 4
    iterations: int = 0
    since_improvement: int = 0
    converged: bool = False
    observations: list[dict] = field(default_factory=list)
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=set)

    def record(self, cand: Candidate, score: float, speedup: float) -> None:
        key = cand.key()
        self.seen.add(key)
        self.observations.append(
            {"attention": list(key[0]), "mlp": list(key[1]), "score": round(score, 4), "speedup": round(speedup, 4)}
        )
        del self.observations[:-MAX_OBSERVATIONS]


@torch.inference_mode()
def score_candidate(
    runner: ModelRunner,
    cache: SwiftKVCache,
    past: int,
    window_tokens: list[int],
    window_targets: list[int],
    cand: Candidate,
    vocab: torch.Tensor | None = None,
) -> float:
    """Teacher-forced match rate of the draft over the last ``len(window_tokens)`` committed tokens.

    The window's tokens are fed again *after* the cache's end with their true positions, and the
    mask hides their original cache entries, so the draft sees exactly what it would have seen while
    drafting them; the cache is rewound afterwards (nothing is copied or overwritten).
    """
    w = len(window_tokens)
    device = runner.device
    ids = torch.tensor(window_tokens, device=device)
    positions = torch.arange(past - w, past, device=device)
    with runner.skipper.skipping(cand.attention, cand.mlp):
        hidden = runner.hidden(cache, ids, positions, past_visible=past - w)
        logits = runner.logits(hidden, vocab)
    cache.truncate(past)
    pred = logits.argmax(dim=-1)
    if vocab is not None:
        pred = vocab[pred]
    target = torch.tensor(window_targets, device=device)
    return float((pred == target).float().mean().item())


class LayerSetSearch:
    """Proposes candidates and folds their scores into a :class:`SearchState`."""

    def __init__(self, num_layers: int, config: SearchConfig, costs: CostModel, max_draft: int, seed: int = 0):
        self.num_layers = num_layers
        self.config = config
        self.costs = costs
        self.max_draft = max_draft
        self.skippable = list(range(1, num_layers - 1))
        self.rng = random.Random(seed)

    # -- proposals ---------------------------------------------------------------------------
    def _count(self, ratio: float) -> int:
        return max(1, min(2 * len(self.skippable), int(round(ratio * 2 * self.num_layers))))

    def _random(self, ratio: float) -> Candidate:
        slots = [("a", i) for i in self.skippable] + [("m", i) for i in self.skippable]
        chosen = self.rng.sample(slots, self._count(ratio))
        return Candidate(frozenset(i for k, i in chosen if k == "a"), frozenset(i for k, i in chosen if k == "m"))

    def _mutate(self, base: Candidate) -> Candidate:
        slots = {("a", i) for i in base.attention} | {("m", i) for i in base.mlp}
        free = [("a", i) for i in self.skippable if i not in base.attention] + [
            ("m", i) for i in self.skippable if i not in base.mlp
        ]
        move = self.rng.random()
        if move < 0.2 and free:  # skip one more sublayer
            slots.add(self.rng.choice(free))
        elif move < 0.4 and len(slots) > 1:  # skip one fewer
            slots.discard(self.rng.choice(sorted(slots)))
        else:  # swap one or two
            for _ in range(self.rng.choice((1, 2))):
                if not slots or not free:
                    break
                out = self.rng.choice(sorted(slots))
                inn = self.rng.choice(free)
                slots.discard(out)
                slots.add(inn)
                free.remove(inn)
                free.append(out)
        return Candidate(frozenset(i for k, i in slots if k == "a"), frozenset(i for k, i in slots if k == "m"))

    def _bayes(self, state: SearchState) -> Candidate | None:
        """One proposal from a Gaussian-process (or TPE) model of all observations so far (optuna)."""
        try:
            import optuna
        except ImportError:  # pragma: no cover - optuna is a dependency
            return None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        names = [f"a{i}" for i in self.skippable] + [f"m{i}" for i in self.skippable]
        ratios = self.config.skip_ratios
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in names
        }
        dists["ratio"] = optuna.distributions.FloatDistribution(min(ratios), max(ratios))
        sampler: optuna.samplers.BaseSampler
        try:
            sampler = optuna.samplers.GPSampler(seed=self.rng.randrange(2**31), n_startup_trials=5)
        except Exception:  # pragma: no cover - older optuna
            sampler = optuna.samplers.TPESampler(seed=self.rng.randrange(2**31))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for obs in state.observations:
            params = {f"a{i}": 0.0 for i in self.skippable} | {f"m{i}": 0.0 for i in self.skippable}
            params.update({f"a{i}": 1.0 for i in obs["attention"]})
            params.update({f"m{i}": 1.0 for i in obs["mlp"]})
            r = (len(obs["attention"]) + len(obs["mlp"])) / (2 * self.num_layers)
            params["ratio"] = min(max(r, min(ratios)), max(ratios))
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=obs["speedup"]))
        trial = study.ask(dists)
        k = self._count(trial.params["ratio"])
        ranked = sorted(names, key=lambda n: trial.params[n], reverse=True)[:k]
        return Candidate(
            frozenset(int(n[1:]) for n in ranked if n[0] == "a"), frozenset(int(n[1:]) for n in ranked if n[0] == "m")
        )

    def propose(self, state: SearchState) -> Candidate:
        if state.iterations > 0 and state.iterations % self.config.bayes_interval == 0 and len(state.observations) >= 5:
            proposed = self._bayes(state)
            if proposed is not None:
                return proposed
        cand = state.best
        for _ in range(20):
            if self.rng.random() < 0.5 and state.iterations > 0:
                cand = self._mutate(state.best)
            else:
                cand = self._random(self.rng.choice(self.config.skip_ratios))
            if cand.key() not in state.seen and (cand.attention or cand.mlp):
                return cand
        return cand

    # -- bookkeeping -------------------------------------------------------------------------
    def _hopeless(self, state: SearchState) -> bool:
        """Stop searching: nothing seen pays, and either nothing could or the search has stalled.

        "Could": at every skip ratio tried, even a set scoring 0.1 better than the best seen would
        not beat plain decoding. "Stalled": ``hopeless_after`` iterations without improvement while
        still below break-even; the search would otherwise keep costing time in every call of the
        step for up to ``max_tolerance_iter`` iterations.
        """
        if state.iterations < self.config.hopeless_after or state.best_speedup >= 1.0:
            return False
        if state.since_improvement >= self.config.hopeless_after:
            return True  # below break-even and no progress for as long again: decode plainly, re-probe later
        return self.prospect(state) < 1.0

    def prospect(self, state: SearchState) -> float:
        """The best expected speed-up a further search could still plausibly find, on this hardware.

        Once sets were scored: at each skip ratio tried, a set scoring 0.1 better than the best seen
        there. Before: a set reaching ``max_score`` at one of the configured ratios. Where
        verification is expensive (weight-only kernels, whose cost grows with the rows) even that
        barely beats plain decoding, and :meth:`SearchSession.affordable` spends accordingly little.
        """
        best_at: dict[int, float] = {}
        for obs in state.observations:
            k = len(obs["attention"]) + len(obs["mlp"])
            best_at[k] = max(best_at.get(k, 0.0), obs["score"])
        if not best_at:
            best_at = {self._count(r): self.config.max_score - 0.1 for r in self.config.skip_ratios}
        return max(
            self.costs.expected_speedup(min(1.0, sc + 0.1), k / (2 * self.num_layers), self.max_draft)[0]
            for k, sc in best_at.items()
        )

    def evaluate(self, cand: Candidate, score: float) -> tuple[float, int]:
        return self.costs.expected_speedup(score, cand.ratio(self.num_layers), self.max_draft)

    def update(self, state: SearchState, cand: Candidate, score: float) -> bool:
        """Fold one scored candidate into the state; True when it became the best."""
        speedup, draft_len = self.evaluate(cand, score)
        state.iterations += 1
        state.record(cand, score, speedup)
        improved = speedup > state.best_speedup + 1e-9
        if improved:
            state.best, state.best_score, state.best_speedup, state.best_draft_len = cand, score, speedup, draft_len
            state.since_improvement = 0
        else:
            state.since_improvement += 1
        c = self.config
        if (
            state.best_score >= c.max_score
            or state.since_improvement >= c.max_tolerance_iter
            or state.iterations >= c.max_opt_iter
            or self._hopeless(state)
        ):
            state.converged = True
            logger.info(
                "layer-set search converged after %d iterations: score %.3f, expected speed-up %.2fx",
                state.iterations,
                state.best_score,
                state.best_speedup,
            )
        return improved


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
        )

    @property
    def searching(self) -> bool:
        return self.search is not None and self.state is not None and not self.state.converged

    @property
    def teacher_window(self) -> int:
        """How many of the prompt's last positions need the full model's argmax (targets of the first iterations)."""
        return self.config.context_window if self.searching else 1

    # -- during the call ----------------------------------------------------------------------
    def start(self, prompt_ids: list[int], tail_argmax: list[int]) -> None:
        """The prompt is cached; ``tail_argmax``: the full model's argmax after its last tokens."""
        self._tokens = list(prompt_ids)
        self._targets_start = len(prompt_ids) - len(tail_argmax)
        self._targets = list(tail_argmax)

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
        Measured on Qwen2.5-0.5B at int4 (its best set 1.03x, no set above 1.11x): searching on a
        full budget made warm calls 0.84x plain decoding.
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
        window = self._tokens[first:past]
        targets = self._targets[first - self._targets_start : past - self._targets_start]
        # the starting set is scored first
        cand = state.best if self.iterations == 0 and state.iterations == 0 else search.propose(state)
        score = score_candidate(runner, cache, past, window, targets, cand, vocab)
        if search.update(state, cand, score) or self.iterations == 0:
            self.choice = SkipChoice.of(state.best, plain=state.best_speedup < 1.0)
        self.iterations += 1

    # -- closing ------------------------------------------------------------------------------
    def close(
        self, profiles: StepProfiles | None, step_key: str, stats: GenerationStats, tokens: int, extra: dict[str, Any]
    ) -> None:
        """Report the call's choice and search in ``stats``; write the step's state back.

        ``extra``: the drafters' per-step state, stored with the profile.
        """
        choice = self.choice
        stats.mode = "plain" if choice.plain else "swift"
        stats.skip_attention, stats.skip_mlp = sorted(choice.attention), sorted(choice.mlp)
        st = self.state
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
