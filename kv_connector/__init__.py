"""Engine-neutral KV-cache transfer core for P/D: transports (Mooncake, MORI-IO), handshake and
block bookkeeping. Knows nothing of vLLM, SGLang or the router."""
