"""Types shared by prepare, place and dispatch: the request descriptor and plans.

Placement's errors (`PlacementError` and its subclasses) live with every other
client-visible error in router.errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from router.workers.worker import Worker

# Characters per token where the router has no tokenizer: the one conversion between a
# text length and a token count (prompt estimates, cached-prefix estimates).
CHARS_PER_TOKEN = 4


def estimate_prompt_tokens(text: str, tokens: Sequence[int] | None) -> int:
    """The prompt's length in tokens: exact with token ids, else estimated from its text."""
    return len(tokens) if tokens is not None else len(text) // CHARS_PER_TOKEN + 1


@dataclass
class RequestDescriptor:
    """What placement needs to know about a request; built by `router.prepare`."""

    request_id: str
    model: str | None
    # The whole chat (every message) or the prompt, as text: the key for prefix-aware policies.
    routing_text: str
    stream: bool = False
    # Token ids of the routing text when the router has a tokenizer configured.
    routing_tokens: list[int] | None = None
    # Session affinity key (from a header such as X-Session-Id), if any.
    session_key: str | None = None
    # Rough prompt+output size, for token-aware load accounting.
    estimated_tokens: int = 0
    # The routing prompt's length in tokens (`estimate_prompt_tokens`): what a P/D pool
    # weighs against the decode worker's cached prefix.
    prompt_tokens: int = 0
    # Workers already tried for this request (retries prefer others).
    excluded: set[str] = field(default_factory=set)
    # The disaggregation decision (PAIR / DECODE_ONLY) of the last attempt that failed,
    # so a retry can try the other kind.
    failed_decision: str | None = None


# The two plans of a P/D pool (metric label values of atom_mesh_disagg_decisions_total).
PAIR = "pair"
DECODE_ONLY = "decode_only"


@dataclass(frozen=True)
class DisaggDecision:
    """Why a P/D pool paired a prefill worker with decode, or let decode prefill alone."""

    decision: str  # PAIR | DECODE_ONLY
    reason: str
    prompt_tokens: int
    cached_tokens: int

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens the decode worker would have to prefill (what a pair saves it)."""
        return max(0, self.prompt_tokens - self.cached_tokens)


@dataclass(frozen=True)
class Single:
    """Run the whole request on one worker."""

    worker: Worker
    reason: str = ""
    # Set when a P/D pool chose decode-only: `worker` is a decode worker prefilling locally.
    disagg: DisaggDecision | None = None


@dataclass(frozen=True)
class Pair:
    """Prefill on one worker, decode on another; KV moves between them."""

    prefill: Worker
    decode: Worker
    prefill_reason: str = ""
    decode_reason: str = ""
    disagg: DisaggDecision | None = None


PlacementPlan = Single | Pair


def plan_workers(plan: PlacementPlan) -> tuple[Worker, ...]:
    """The workers a plan runs on: one, or prefill then decode."""
    return (plan.worker,) if isinstance(plan, Single) else (plan.prefill, plan.decode)
