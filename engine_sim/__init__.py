"""Simulated LLM engine fleet: many OpenAI-compatible fake engines in one asyncio process.

Routers are benchmarked and fault-tested against it: it answers like vLLM or SGLang
(endpoints, SSE chunks, metrics, P/D protocols) with a timing model grounded in how
engines behave (compute-bound prefill, bandwidth-bound decode, a finite prefix cache),
so a routing decision changes latency and cache hits the way it would on real engines.

Layout: pure decision code (`tokenizer`, `kv_cache`, `timing`, `scheduler`, `faults`,
`openai_api`) is separate from I/O (`engine`, `transfer`, `server`, `fleet`, `cli`).
"""

from engine_sim.config import EngineConfig, FaultConfig, WorkerSpec

__all__ = ["EngineConfig", "FaultConfig", "WorkerSpec"]
