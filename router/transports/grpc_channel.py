"""One gRPC channel per `grpc://` worker: created on first use, reused, closed on removal.

A grpc.aio channel multiplexes every call to its worker over one HTTP/2 connection and
reconnects by itself, so the router keeps exactly one per worker (as the HTTP side keeps
one pooled session). The registry's removal listener closes it; `close_all` runs at
shutdown. grpcio is an optional dependency (the `grpc` extra): `require_grpc` turns its
absence into an error that says what to install.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from router.workers.worker import Worker

if TYPE_CHECKING:
    import grpc.aio

logger = logging.getLogger("atom_mesh.grpc")

GRPC_EXTRA_HINT = "grpc:// workers need the router's 'grpc' extra: pip install 'atom-mesh[grpc]'"

# Generations are long-lived streams: no message size cap (prompts of token ids and
# logprobs can be large), and keepalive pings so a dead engine host is noticed on an
# idle channel. The servicer tolerates pings without calls (keepalive_permit_without_calls).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def grpc_available() -> bool:
    """Whether the `grpc` extra is installed (checked without importing grpcio)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("grpc", "grpc_health", "smg_grpc_proto"))


def require_grpc() -> None:
    """Raise RuntimeError naming the extra when grpcio or the published protos are missing."""
    try:
        import grpc  # noqa: F401
        import grpc_health.v1.health_pb2  # noqa: F401
        import smg_grpc_proto.generated.vllm_engine_pb2  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{GRPC_EXTRA_HINT} ({exc})") from exc


def grpc_target(url: str) -> str:
    """`grpc://host:port` -> `host:port`, the target grpcio dials."""
    return url.split("://", 1)[1].rstrip("/")


class GrpcChannels:
    """The channels of the router's gRPC workers, keyed by worker id."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def channel(self, worker: Worker) -> grpc.aio.Channel:
        """The worker's channel, created on first use (it connects lazily)."""
        channel = self._channels.get(worker.worker_id)
        if channel is None:
            require_grpc()
            import grpc.aio

            channel = grpc.aio.insecure_channel(grpc_target(worker.url), options=_CHANNEL_OPTIONS)
            self._channels[worker.worker_id] = channel
        return channel

    async def close(self, worker: Worker) -> None:
        """Close the worker's channel (its in-flight calls end with CANCELLED)."""
        channel = self._channels.pop(worker.worker_id, None)
        if channel is not None:
            await channel.close()

    def discard(self, worker: Worker) -> None:
        """Registry removal listener (synchronous): close the channel in the background.

        In-flight requests of a removed worker keep running on a drain; `remove` is
        immediate by contract, so their calls end when the channel closes."""
        channel = self._channels.pop(worker.worker_id, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close(grace=None))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def close_all(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


_closing: set[asyncio.Task[None]] = set()  # close tasks kept referenced until done
