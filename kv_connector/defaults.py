"""The one default of each connector timeout, shared by the core and the engine bindings.

The vLLM connector's `kv_connector_extra_config` and the core's config objects all read
these, so a default changes in one place. Generous on purpose: on a loaded host a push
can stall for seconds, and a request failed for a slow push costs a whole prefill.
"""

from __future__ import annotations

# The consumer fails a request whose KV has not arrived by then; the producer starts no
# write later than this after the request (so a late write never lands in reused blocks).
TRANSFER_TIMEOUT_S = 120.0
# The producer frees blocks nobody claimed after this. Longer than the transfer timeout,
# so a decode that is still allowed to ask never finds the KV gone.
HOLD_TTL_S = 180.0
