"""Handshake messages of the push protocol, and their wire encoding (msgpack).

The flow (serial P/D, as the router's `vllm` backend drives it):
1. Prefill finishes; the producer's scheduler keeps the request's blocks, tells its
   transfer workers at once (`Hold`, on their own side channel, so the hold never waits
   for an engine step) and returns kv_transfer_params naming its engine id,
   side-channel address and KV fingerprint.
2. Decode allocates blocks and sends the producer a `PushRequest` over the side channel:
   which transfer, where to write (its layout + block ids), how long it will wait.
3. The producer writes the pages into decode's memory and answers `PushResult`; it
   frees its blocks when the push ends or its hold times out.

Everything is keyed by transfer id + engine identity + KV fingerprint, so KV of another
model or another run of the producer can never be loaded; every request names its
protocol version (`kv_connector.identity`), so a producer of another build refuses it
with an error that says so.
"""

from __future__ import annotations

import msgspec

from kv_connector.identity import UNVERSIONED
from kv_connector.layout import KVLayout


class Hold(msgspec.Struct, tag="hold", frozen=True):
    """Producer scheduler -> its own workers: these blocks wait for a consumer."""

    transfer_id: str
    owner: str  # the engine's request id, reported back when the hold ends
    block_ids: list[int]
    engine_id: str  # must be the worker's own engine: a hold for another incarnation is dropped


class PushRequest(msgspec.Struct, tag="push", frozen=True):
    transfer_id: str
    ticket: str  # unique per attempt, echoed in the result (a transfer id may be retried)
    producer_engine_id: str  # the producer incarnation the consumer expects
    consumer_engine_id: str
    fingerprint: str  # model + KV format identity; both sides must agree
    consumer_endpoint: bytes  # Transport.engine_descriptor() of the consumer
    consumer_layout: KVLayout
    dst_block_ids: list[int]
    timeout_s: float  # the consumer gives up after this; the producer never writes later
    first_block: int = 0  # producer block index of dst_block_ids[0] (consumer-side prefix hits)
    protocol_version: int = UNVERSIONED  # the consumer's identity.PROTOCOL_VERSION (absent before versioning)


class PushResult(msgspec.Struct, tag="result", frozen=True):
    transfer_id: str
    ticket: str
    ok: bool
    error: str = ""
    nbytes: int = 0


Message = Hold | PushRequest | PushResult
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    """Raises msgspec.DecodeError / ValidationError on garbage (the channel drops those)."""
    return _decoder.decode(data)
