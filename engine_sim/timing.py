"""How long one engine step takes (pure functions of the work in the step).

A step is one forward pass of a continuous batch, mixing prefill chunks and decode
tokens like vLLM's chunked prefill:

    step = overhead (weights read once)
         + prefill_tokens * prefill_cost          (compute-bound: grows with uncached tokens)
         + decode_seqs * per_seq_cost             (bandwidth-bound: grows with batch size)
         + decode_context_tokens * kv_read_cost   (reading each sequence's KV)

all multiplied by `time_scale`.
"""

from __future__ import annotations

from engine_sim.config import EngineConfig


def step_seconds(cfg: EngineConfig, prefill_tokens: int, decode_seqs: int, decode_context_tokens: int) -> float:
    """Duration of one step that prefills `prefill_tokens` and decodes `decode_seqs` sequences."""
    if prefill_tokens == 0 and decode_seqs == 0:
        return 0.0
    us = (
        cfg.step_overhead_ms * 1e3
        + prefill_tokens * cfg.prefill_us_per_token
        + decode_seqs * cfg.decode_us_per_seq
        + decode_context_tokens * cfg.decode_us_per_context_token
    )
    return us * 1e-6 * cfg.time_scale


def kv_transfer_seconds(cfg: EngineConfig, tokens: int) -> float:
    """Time to move `tokens` tokens of KV from a prefill to a decode worker."""
    return (cfg.kv_transfer_base_ms * 1e3 + tokens * cfg.kv_transfer_us_per_token) * 1e-6 * cfg.time_scale
