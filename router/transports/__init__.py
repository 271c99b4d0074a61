"""How the router talks to a worker, derived from its URL scheme in one place.

`http://` and `https://` workers speak the OpenAI HTTP API (the adapters in
`router.adapters` forward bodies); `grpc://` workers speak a token-level gRPC protocol
(vLLM's `VllmEngine` service from smg-grpc-proto): the router sends token ids and renders
the OpenAI answer itself (`router.transports.grpc_leg`).
"""

from __future__ import annotations

import enum


class Transport(enum.StrEnum):
    HTTP = "http"
    GRPC = "grpc"


# URL scheme -> transport; the only table that says which schemes a worker URL may use.
SCHEMES: dict[str, Transport] = {"http": Transport.HTTP, "https": Transport.HTTP, "grpc": Transport.GRPC}


def transport_of(url: str) -> Transport:
    """The transport a worker URL names (validated by `router.workers.specs`; anything
    that is not grpc:// is HTTP, as a Worker built directly in a test is)."""
    return Transport.GRPC if url.startswith("grpc://") else Transport.HTTP
