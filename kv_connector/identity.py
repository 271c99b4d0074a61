"""Which peers may exchange KV: the push protocol's version and the KV fingerprint.

Two builds that speak the push protocol differently must refuse each other with an
error that says so, not misread each other's messages (as vLLM's NIXL connector refuses
peers whose compatibility hash differs). The version travels explicitly (in every
`PushRequest` and in vLLM's kv_transfer_params) so the refusal names it, and it is also
hashed into the fingerprint, so that even a peer that only compares fingerprints refuses.

Bump `PROTOCOL_VERSION` whenever a message, a kv_transfer_params key or the meaning of a
field changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# 1: builds before versioning (they sent no version); 2: test hooks left the wire, version added.
PROTOCOL_VERSION = 2
UNVERSIONED = 1  # what a message without a version field comes from


def kv_fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hash of what both sides' KV pages depend on (model, dtype, block size, layers...)
    and of the protocol version; equal fingerprints mean byte-compatible KV from a compatible build."""
    payload = {"kv_protocol_version": PROTOCOL_VERSION, **identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def version_problem(peer_version: int, peer: str) -> str | None:
    """Why a `peer` speaking `peer_version` cannot exchange KV with this build, or None."""
    if peer_version == PROTOCOL_VERSION:
        return None
    return (
        f"KV push protocol mismatch: the {peer} speaks version {peer_version}, this engine {PROTOCOL_VERSION}; "
        "run prefill and decode with the same atom-mesh release"
    )
