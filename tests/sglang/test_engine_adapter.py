"""The bridge from SGLang's raw-address engine calls to the kv_connector transport.

Pure parts (address -> region mapping, session ids) and one real Mooncake TCP transfer
between two endpoints on loopback: the same path SGLang's prefill takes per request.
"""

from __future__ import annotations

import ctypes

import pytest
from sglang_atom.engine_adapter import (
    KVConnectorEngine,
    Region,
    RegionMap,
    decode_session,
    encode_session,
)

from kv_connector.transport import TransferError, TransportUnavailable, create_transport


def test_region_map_resolves_addresses_inside_a_region_only() -> None:
    regions = RegionMap([Region(1000, 100, b"a"), Region(5000, 50, b"b")])
    assert regions.resolve(1000, 100).desc == b"a" and regions.resolve(1000, 100).offset == 0
    ref = regions.resolve(5010, 40)
    assert (ref.desc, ref.offset) == (b"b", 10)
    for addr, length in [(999, 1), (1050, 51), (1100, 1), (4000, 10), (5049, 2), (9000, 1)]:
        with pytest.raises(TransferError, match="not inside any registered region"):
            regions.resolve(addr, length)


def test_region_map_replace_and_remove() -> None:
    regions = RegionMap([Region(1000, 100, b"old")])
    regions.add(Region(1000, 200, b"new"))
    assert regions.resolve(1150, 10).desc == b"new"
    regions.remove(1000)
    with pytest.raises(TransferError):
        regions.resolve(1000, 1)
    with pytest.raises(ValueError, match="positive"):
        regions.add(Region(1, 0, b"x"))


def test_session_id_round_trips_and_looks_like_host_port() -> None:
    regions = [Region(4096, 8192, b"\x00\x01desc"), Region(1 << 40, 64, b"\xff" * 16)]
    session = encode_session(b"127.0.0.1:12345", regions)
    assert session.isascii()
    # SGLang's Mooncake code computes `int(session.rsplit(":", 1)[1])` to shard queues.
    assert int(session.rsplit(":", 1)[1]) >= 0
    engine_desc, decoded = decode_session(session)
    assert engine_desc == b"127.0.0.1:12345"
    assert decoded.regions() == sorted(regions, key=lambda r: r.base)


def test_foreign_session_id_names_the_fix() -> None:
    with pytest.raises(ValueError, match="--disaggregation-transfer-backend atom"):
        decode_session("127.0.0.1:16000")


def _mooncake_engine() -> KVConnectorEngine:
    try:
        return KVConnectorEngine(create_transport("mooncake", host="127.0.0.1", protocol="tcp"))
    except TransportUnavailable as e:  # pragma: no cover - the dev/CI env installs it
        pytest.skip(f"mooncake unavailable: {e}")


@pytest.mark.slow
def test_batch_transfer_moves_bytes_between_two_real_mooncake_endpoints() -> None:
    prefill, decode = _mooncake_engine(), _mooncake_engine()
    try:
        src = (ctypes.c_ubyte * 4096).from_buffer_copy(bytes(range(256)) * 16)
        dst = (ctypes.c_ubyte * 8192)()
        aux = (ctypes.c_ubyte * 64)()
        src_ptr, dst_ptr, aux_ptr = ctypes.addressof(src), ctypes.addressof(dst), ctypes.addressof(aux)
        assert prefill.batch_register([src_ptr], [len(src)]) == 0
        assert decode.batch_register([dst_ptr, aux_ptr], [len(dst), len(aux)]) == 0
        session = decode.get_session_id()  # what SGLang's decode ships to the prefill

        # Two "pages" scattered into the decode buffer, plus an aux item in another region.
        rc = prefill.batch_transfer_sync(
            session, [src_ptr, src_ptr + 1024, src_ptr + 7], [dst_ptr + 4096, dst_ptr, aux_ptr + 10], [512, 256, 5]
        )
        assert rc == 0
        assert bytes(dst[4096 : 4096 + 512]) == bytes(src[0:512])
        assert bytes(dst[0:256]) == bytes(src[1024:1280])
        assert bytes(aux[10:15]) == bytes(src[7:12])
        assert bytes(dst[512:4096]) == bytes(4096 - 512)  # nothing else was touched

        # An address outside what the decode registered fails the batch with SGLang's
        # negative return code (a failed room), never an exception in its worker thread.
        assert prefill.batch_transfer_sync(session, [src_ptr], [dst_ptr + 8190], [16]) == -1
        assert prefill.batch_transfer_sync("127.0.0.1:1", [src_ptr], [dst_ptr], [16]) == -1
        assert prefill.send_probe(session) == 0
    finally:
        prefill.close()
        decode.close()


def test_session_id_changes_when_regions_change() -> None:
    class _FakeTransport:
        """Only what get_session_id/register touch; the real transfer is tested above."""

        def engine_descriptor(self) -> bytes:
            return b"peer"

        def register_memory(self, ptr: int, length: int, *, device: str = "cpu", device_id: int = -1) -> bytes:
            return ptr.to_bytes(8, "little")

    engine = KVConnectorEngine(_FakeTransport())  # type: ignore[arg-type]
    engine.register(4096, 100)
    first = engine.get_session_id()
    assert engine.get_session_id() == first
    engine.register(8192, 100)
    second = engine.get_session_id()
    assert second != first and len(decode_session(second)[1].regions()) == 2
    engine.batch_deregister([4096])
    assert [r.base for r in decode_session(engine.get_session_id())[1].regions()] == [8192]
