"""Per-request fault decisions from a worker's `FaultConfig` and its seeded RNG (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine_sim.config import FaultConfig


@dataclass(frozen=True)
class FaultDecision:
    error_status: int | None = None  # answer at once with this status
    hang: bool = False  # never answer
    delay_s: float = 0.0  # latency spike before the engine sees the request
    die_after_tokens: int | None = None  # drop the connection after this many tokens


def decide(cfg: FaultConfig, rng: random.Random) -> FaultDecision:
    """Draw the faults for one request. Each rate is drawn only when non-zero, so turning one
    knob on does not reshuffle the draws of another (runs stay comparable)."""
    if cfg.error_rate and rng.random() < cfg.error_rate:
        return FaultDecision(error_status=cfg.error_status)
    if cfg.hang_rate and rng.random() < cfg.hang_rate:
        return FaultDecision(hang=True)
    delay = cfg.spike_ms / 1e3 if cfg.spike_rate and rng.random() < cfg.spike_rate else 0.0
    return FaultDecision(delay_s=delay, die_after_tokens=cfg.die_after_tokens)
