"""SGLang's transfer-engine calls, served by the project's `kv_connector` transport.

SGLang's Mooncake backend (the P/D protocol we reuse: bootstrap server, ZMQ handshake,
per-room status) drives its data path through a small engine object: `batch_register`,
`batch_transfer_sync(session_id, src_ptrs, dst_ptrs, lengths)`, `get_session_id`,
`send_probe`. It speaks raw virtual addresses; our `Transport` interface speaks
`MemoryRef(descriptor, offset)` so that transports which address memory by descriptor
(MORI-IO) fit as well as Mooncake. This module is the bridge, so that SGLang and vLLM
share one transfer core.

How a raw destination address becomes a `MemoryRef` on the prefill side: the decode's
*session id* (which SGLang already ships to the prefill in its registration and in every
transfer request) is made self-describing. It carries the decode endpoint's
`engine_descriptor()` and, for each registered region, `(base, length, descriptor)`.
The prefill parses it once per peer (cached) and maps every address into its region.
SGLang also reads a session id as `host:port` (it shards transfer queues by the sum of
the ports), so the id ends in `:<number>` derived from the engine descriptor.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from kv_connector.transport import MemoryRef, TransferError, TransferOp, Transport

logger = logging.getLogger("atom_mesh.sglang.engine")

SESSION_PREFIX = "atom1."


@dataclass(frozen=True)
class Region:
    """A registered memory region: `[base, base+length)` and the transport's descriptor."""

    base: int
    length: int
    desc: bytes


class RegionMap:
    """Maps raw addresses to `MemoryRef`s inside known regions (pure, not thread-safe)."""

    def __init__(self, regions: Sequence[Region] = ()) -> None:
        self._regions: list[Region] = []
        self._bases: list[int] = []
        for r in regions:
            self.add(r)

    def add(self, region: Region) -> None:
        if region.length <= 0:
            raise ValueError(f"region at {region.base:#x} has length {region.length}; must be positive")
        i = bisect.bisect_left(self._bases, region.base)
        if i < len(self._regions) and self._regions[i].base == region.base:
            self._regions[i] = region  # re-registration of the same base replaces it
            return
        self._regions.insert(i, region)
        self._bases.insert(i, region.base)

    def remove(self, base: int) -> None:
        i = bisect.bisect_left(self._bases, base)
        if i < len(self._regions) and self._regions[i].base == base:
            del self._regions[i]
            del self._bases[i]

    def resolve(self, addr: int, length: int) -> MemoryRef:
        """The `MemoryRef` for `[addr, addr+length)`; TransferError if no region holds it all."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr + length <= r.base + r.length:
                return MemoryRef(r.desc, addr - r.base)
        raise TransferError(f"[{addr:#x}, +{length}) is not inside any registered region")

    def regions(self) -> list[Region]:
        return list(self._regions)


def encode_session(engine_desc: bytes, regions: Sequence[Region]) -> str:
    """An ASCII session id (SGLang decodes it as ASCII) that describes a peer completely."""
    payload = {
        "e": base64.b64encode(engine_desc).decode(),
        "m": [[r.base, r.length, base64.b64encode(r.desc).decode()] for r in regions],
    }
    # zlib: the map repeats bases and lengths; a 160-region map shrinks ~4x (SGLang resends
    # the session id with every transfer request).
    raw = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
    shard_key = zlib.crc32(engine_desc) % 65536
    return f"{SESSION_PREFIX}{base64.urlsafe_b64encode(raw).decode()}:{shard_key}"


def decode_session(session_id: str) -> tuple[bytes, RegionMap]:
    """Inverse of `encode_session`; ValueError for ids another backend made."""
    if not session_id.startswith(SESSION_PREFIX):
        raise ValueError(
            f"session id {session_id[:40]!r} was not made by the atom transfer backend: "
            "run both prefill and decode with --disaggregation-transfer-backend atom"
        )
    encoded = session_id[len(SESSION_PREFIX) :].rsplit(":", 1)[0]
    payload = json.loads(zlib.decompress(base64.urlsafe_b64decode(encoded)))
    regions = [Region(base, length, base64.b64decode(desc)) for base, length, desc in payload["m"]]
    return base64.b64decode(payload["e"]), RegionMap(regions)


class KVConnectorEngine:
    """Duck-types SGLang's `MooncakeTransferEngine` on top of a `kv_connector` `Transport`.

    Return codes follow SGLang's engine (0 ok, negative failure) because SGLang's
    transfer workers turn a negative code into a failed room (the decode then reports a
    clear KV-transfer error to the client) instead of an exception in a worker thread.
    """

    def __init__(self, transport: Transport, *, device: str = "cpu", device_id: int = -1) -> None:
        self._transport = transport
        self._device = device
        self._device_id = device_id
        self._local = RegionMap()
        self._session_id: str | None = None
        self._peers: dict[str, tuple[str, RegionMap]] = {}
        self._lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        return self._transport

    def register(self, ptr: int, length: int) -> None:
        desc = self._transport.register_memory(ptr, length, device=self._device, device_id=self._device_id)
        with self._lock:
            self._local.add(Region(ptr, length, desc))
            self._session_id = None

    def batch_register(self, ptrs: Sequence[int], lengths: Sequence[int]) -> int:
        for ptr, length in zip(ptrs, lengths, strict=True):
            self.register(ptr, length)
        return 0

    def deregister(self, ptr: int) -> None:
        # The Transport interface has no per-region unregister (memory stays registered
        # until `close`); we only stop advertising and resolving the region.
        with self._lock:
            self._local.remove(ptr)
            self._session_id = None

    def batch_deregister(self, ptrs: Sequence[int]) -> int:
        for ptr in ptrs:
            self.deregister(ptr)
        return 0

    def get_session_id(self) -> str:
        with self._lock:
            if self._session_id is None:
                self._session_id = encode_session(self._transport.engine_descriptor(), self._local.regions())
            return self._session_id

    def _peer(self, session_id: str) -> tuple[str, RegionMap]:
        with self._lock:
            known = self._peers.get(session_id)
        if known is not None:
            return known
        engine_desc, regions = decode_session(session_id)
        peer = (self._transport.connect(engine_desc), regions)
        with self._lock:
            self._peers[session_id] = peer
        return peer

    def ops_for(
        self, session_id: str, src_ptrs: Sequence[int], dst_ptrs: Sequence[int], lengths: Sequence[int]
    ) -> tuple[str, list[TransferOp]]:
        """The transport peer name and ops for SGLang's raw-address batch."""
        peer, remote = self._peer(session_id)
        with self._lock:
            ops = [
                TransferOp(self._local.resolve(s, n), remote.resolve(d, n), n)
                for s, d, n in zip(src_ptrs, dst_ptrs, lengths, strict=True)
            ]
        return peer, ops

    def batch_transfer_sync(
        self, session_id: str, buffers: Sequence[int], peer_buffer_addresses: Sequence[int], lengths: Sequence[int]
    ) -> int:
        try:
            peer, ops = self.ops_for(session_id, buffers, peer_buffer_addresses, lengths)
            self._transport.write(peer, ops)
        except Exception as e:
            logger.warning("KV write of %d blocks failed: %s", len(lengths), e)
            return -1
        return 0

    def transfer_sync(self, session_id: str, buffer: int, peer_buffer_address: int, length: int) -> int:
        return self.batch_transfer_sync(session_id, [buffer], [peer_buffer_address], [length])

    def send_probe(self, peer_session_id: str) -> int:
        """0 when the peer's endpoint answers a handshake, -1 otherwise."""
        try:
            engine_desc, _ = decode_session(peer_session_id)
            self._transport.connect(engine_desc)
        except (TransferError, ValueError, OSError) as e:
            logger.info("probe of a decode peer failed: %s", e)
            return -1
        return 0

    def get_ib_device(self) -> str | None:
        return None

    def close(self) -> None:
        self._transport.close()
