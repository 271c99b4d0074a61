"""Where a request runs: filter the fleet to candidates, let the pool's policy choose.

Pure: the planner reads worker state and the clock value it is given, and calls the
policies; it does no I/O. Every way a request can fail to be placed is a typed
`PlacementError` (with its HTTP status), raised before any policy is consulted, so a
failed placement leaves no trace in policy state (trees, rotations, sessions).

In a P/D pool the decode worker is chosen first (its cache decides what a prefill would
save), then the `DisaggRule` says whether to pair a prefill worker with it (`Pair`) or
let it prefill locally (`Single` on the decode worker); the prefill policy runs only for
a pair.

Overload protection (`router.placement.overload`) is the last candidate filter: a pool's
overloaded workers are left out while another has room. When it changed the candidates,
its reason is appended to the policy's (`least_load+overload_filtered`), so the
placement metric shows both what the policy chose and that overload shaped the choice.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from router.config import DisaggConfig, LoadMonitorConfig, RouterConfig
from router.errors import (
    NoHealthyDecodeError,
    NoHealthyPrefillError,
    NoWorkersError,
    PlacementError,
    UnknownModelError,
    WorkerOverloadShedError,
)
from router.placement.disagg_decider import DisaggRule
from router.placement.overload import Filtered, filter_overloaded
from router.placement.types import PAIR, Pair, PlacementPlan, RequestDescriptor, Single
from router.policies.base import Policy, Selection
from router.policies.kv_block_index import KVBlockIndex
from router.policies.registry import create_policy
from router.workers.worker import Role, Worker, WorkerState

_POOL_ERRORS: dict[Role, type[PlacementError]] = {
    Role.REGULAR: NoWorkersError,
    Role.PREFILL: NoHealthyPrefillError,
    Role.DECODE: NoHealthyDecodeError,
}


def known_models(workers: Iterable[Worker]) -> set[str]:
    """Every model some worker is known to serve (workers not yet discovered add none)."""
    return {model for worker in workers for model in worker.models}


class Planner:
    """One policy per pool; `plan` turns a request into a `Single` or a `Pair`.

    `disagg` decides pair versus decode-only in P/D mode; by default it always pairs (a
    backend that cannot run decode-only). `load` holds the overload thresholds.
    """

    def __init__(
        self,
        regular_policy: Policy,
        prefill_policy: Policy,
        decode_policy: Policy,
        disagg: DisaggRule | None = None,
        load: LoadMonitorConfig | None = None,
    ) -> None:
        self._policies = {
            Role.REGULAR: regular_policy,
            Role.PREFILL: prefill_policy,
            Role.DECODE: decode_policy,
        }
        self.disagg = disagg or DisaggRule(DisaggConfig())
        self.load = load or LoadMonitorConfig()

    @classmethod
    def from_config(
        cls,
        config: RouterConfig,
        rng: random.Random,
        kv_index: KVBlockIndex | None = None,
        *,
        decode_only_capable: bool = False,
    ) -> Planner:
        """Policies named by `--policy` / `--prefill-policy` / `--decode-policy`; the
        disaggregation rule from `config.disagg` and whether the backend's adapter can
        serve a request on a decode worker alone (`Adapter.runs_decode_only`)."""
        def build(role: Role) -> Policy:
            return create_policy(config.policy_for(role.value), config.policy_config, rng, kv_index)

        return cls(
            regular_policy=build(Role.REGULAR),
            prefill_policy=build(Role.PREFILL),
            decode_policy=build(Role.DECODE),
            disagg=DisaggRule(config.disagg, decode_only_capable),
            load=config.load_monitor,
        )

    def policy(self, role: Role) -> Policy:
        return self._policies[role]

    def plan(
        self, request: RequestDescriptor, workers: Iterable[Worker], *, pd: bool, now: float
    ) -> PlacementPlan:
        """Choose worker(s) for `request` at time `now`, or raise a `PlacementError`."""
        workers = list(workers)
        if not workers:
            raise NoWorkersError(
                "no workers are registered; start the router with --worker-urls "
                "(or --prefill/--decode with --pd-disaggregation), or add one with POST /workers"
            )
        roles = (Role.PREFILL, Role.DECODE) if pd else (Role.REGULAR,)
        pool = [w for w in workers if w.role in roles]
        if pool and not any(w.serves(request.model) for w in pool):
            served = ", ".join(sorted(known_models(pool)))
            raise UnknownModelError(
                f"model {request.model!r} is not served here (served: {served}); "
                "pick one from GET /v1/models"
            )
        if not pd:
            chosen, reason = self._select(Role.REGULAR, self._candidates(Role.REGULAR, request, pool, now), request)
            return Single(chosen.worker, reason)
        # Both pools are checked before either policy runs, so a failure changes no state.
        prefill_candidates = self._prefill_candidates(request, pool, now)
        decode_candidates = self._candidates(Role.DECODE, request, pool, now)
        decode, decode_reason = self._select(Role.DECODE, decode_candidates, request)
        prefill_candidates = _on_transport(prefill_candidates, decode.worker)
        decision = self.disagg.decide(
            prompt_tokens=request.prompt_tokens,
            cached_tokens=decode.cached_tokens,
            prefill_in_flight=[w.in_flight_requests for w in prefill_candidates.workers],
            failed_decision=request.failed_decision,
        )
        if decision.decision != PAIR:
            return Single(decode.worker, decode_reason, decision)
        if not prefill_candidates.workers:
            raise NoHealthyPrefillError(
                f"no prefill worker{_for_model(request.model)} speaks decode worker {decode.worker.url}'s transport "
                f"({decode.worker.transport.value}): a pair's legs must both be http:// or both grpc://; "
                "register the model's prefill and decode workers with one scheme"
            )
        prefill, prefill_reason = self._select(Role.PREFILL, prefill_candidates, request)
        return Pair(prefill.worker, decode.worker, prefill_reason, decode_reason, decision)

    def on_worker_removed(self, worker: Worker) -> None:
        """Registry removal listener: the worker's pool policy forgets it."""
        self._policies[worker.role].on_worker_removed(worker)

    def evict(self, now: float) -> int:
        """The periodic eviction tick for every pool's policy; returns the total freed."""
        return sum(policy.evict(now) for policy in self._policies.values())

    def _prefill_candidates(self, request: RequestDescriptor, pool: list[Worker], now: float) -> Filtered:
        """The prefill candidates; none (rather than an error) where decode may serve alone,
        which is also where a shed for overloaded prefill workers goes decode-only."""
        try:
            return self._candidates(Role.PREFILL, request, pool, now)
        except (NoHealthyPrefillError, WorkerOverloadShedError):
            if self.disagg.may_skip_prefill:
                return Filtered([])
            raise

    def _select(self, role: Role, candidates: Filtered, request: RequestDescriptor) -> tuple[Selection, str]:
        """The policy's selection, and its reason with the overload filter's appended."""
        selection = self._policies[role].select_worker(candidates.workers, request)
        reason = f"{selection.reason}+{candidates.reason}" if candidates.reason else selection.reason
        return selection, reason

    def _candidates(self, role: Role, request: RequestDescriptor, pool: list[Worker], now: float) -> Filtered:
        """Workers of `role` that serve the model, take requests now and are not overloaded.

        Workers this request already tried are left out, unless that leaves none: a retry
        on a worker that failed once beats failing the request outright.
        """
        serving = [w for w in pool if w.role is role and w.serves(request.model)]
        available = [w for w in serving if w.accepts_new_requests(now)]
        if not available:
            raise _unavailable(role, request.model, serving, now)
        fresh = [w for w in available if w.worker_id not in request.excluded and w.url not in request.excluded]
        return filter_overloaded(fresh or available, self.load, role.value)


def _on_transport(candidates: Filtered, decode: Worker) -> Filtered:
    """The prefill candidates that speak the decode worker's transport. A pair's legs must
    carry the same prompt: a gRPC leg sends the router's token ids, an HTTP engine
    tokenizes the body itself, and decode's KV must be for exactly the prompt it runs."""
    same = [w for w in candidates.workers if w.transport is decode.transport]
    return candidates if len(same) == len(candidates.workers) else Filtered(same, candidates.reason)


def _for_model(model: str | None) -> str:
    return f" for model {model!r}" if model is not None else ""


def _unavailable(role: Role, model: str | None, serving: list[Worker], now: float) -> PlacementError:
    """The pool's error, saying why each worker is out and when to try again."""
    error = _POOL_ERRORS[role]
    for_model = _for_model(model)
    if not serving:
        return error(
            f"no {role.value} worker is registered{for_model}; add one with "
            f"POST /workers (role {role.value!r}) or the router's command line"
        )
    reasons = Counter(
        w.state.value if w.state is not WorkerState.READY else "circuit_open" for w in serving
    )
    blocked = [w.breaker.retry_after(now) for w in serving if w.state is WorkerState.READY]
    retry_after = min(blocked) if blocked else None
    summary = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    hint = f"retry in {retry_after:.0f}s" if retry_after is not None else "retry later"
    return error(
        f"no {role.value} worker can take requests{for_model} ({summary}); {hint}, "
        "or check GET /workers",
        retry_after=retry_after,
    )
