"""A model's tokenizer fetched from its gRPC engine (`GetTokenizer`), for a router started
without `--tokenizer-path` / `--model-path`.

The engine streams a ZIP of its tokenizer directory (tokenizer.json, tokenizer_config.json,
the chat template, generation_config.json ...; smg_grpc_servicer's tokenizer_bundle) in
chunks, the last carrying the archive's SHA-256. The router fetches it once per model,
when the first gRPC worker serving that model registers, checks the digest, unpacks it
under the cache directory by digest (a restart finds it unpacked), and loads it as it
would load `--tokenizer-path`. A worker whose engine cannot send one still registers: it
then serves token-id completions only, as a router without a tokenizer does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import aiohttp
import grpc
import grpc.aio
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2_grpc

from router.tokenizer import HFTokenizer, ModelTokenizers
from router.transports import Transport
from router.transports.grpc_channel import GrpcChannels
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.grpc")

# A tokenizer bundle is a few MB (the largest vocabularies ~30 MB): generous for a slow link.
FETCH_TIMEOUT_SECS = 120.0


class TokenizerBundleError(RuntimeError):
    """The engine's tokenizer bundle is unusable (digest mismatch, not a ZIP, unsafe paths)."""


def unpack_bundle(data: bytes, sha256: str, cache_dir: Path) -> Path:
    """Check `data` against the engine's `sha256` (empty: not sent, not checked) and unpack
    it to `cache_dir/<digest>`, atomically (a reader sees the whole directory or none);
    an existing directory for the digest is reused. Only plain file names are accepted:
    the bundle is a flat directory, and a path that climbs out of it is refused."""
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and sha256.lower() != digest:
        raise TokenizerBundleError(f"tokenizer bundle digest mismatch: the engine sent {sha256}, the bytes hash to {digest}")
    target = cache_dir / digest
    if target.is_dir():
        return target
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise TokenizerBundleError(f"tokenizer bundle is not a ZIP archive: {exc}") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for member in members:
            name = PurePosixPath(member.filename)
            if len(name.parts) != 1 or name.name in ("", ".", ".."):
                raise TokenizerBundleError(f"tokenizer bundle holds a path that is not a plain file name: {member.filename!r}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=cache_dir))
        try:
            for member in members:
                (tmp / member.filename).write_bytes(archive.read(member))
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a concurrent unpack of the same bundle
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


async def fetch_bundle(channel: grpc.aio.Channel, timeout_secs: float = FETCH_TIMEOUT_SECS) -> tuple[bytes, str]:
    """`GetTokenizer`'s chunks joined, and the digest the last one carries."""
    stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
    parts: list[bytes] = []
    digest = ""
    async for chunk in stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=timeout_secs):
        parts.append(chunk.data)
        digest = chunk.sha256 or digest
    return b"".join(parts), digest


class TokenizerFetcher:
    """The registration hook that gives the router a tokenizer for every model its gRPC
    workers serve (when none was configured): fetched from the first worker of a model,
    once; workers registering meanwhile for the same model wait for that fetch."""

    def __init__(
        self, tokenizers: ModelTokenizers, channels: GrpcChannels, cache_dir: str | Path, generation_config: str
    ) -> None:
        self.tokenizers = tokenizers
        self.channels = channels
        self.cache_dir = Path(cache_dir).expanduser()
        self.generation_config = generation_config
        self._locks: dict[str, asyncio.Lock] = {}
        # Where each model's bundle was unpacked: relay processes load it from there.
        self._dirs: dict[str, str] = {}

    async def __call__(self, worker: Worker, _session: aiohttp.ClientSession) -> None:
        if worker.transport is not Transport.GRPC:
            return
        for model in sorted(worker.models):
            lock = self._locks.setdefault(model, asyncio.Lock())
            async with lock:
                if not self.tokenizers.has(model):
                    await self._fetch(worker, model)
            if model in self._dirs:
                worker.engine_info.setdefault("tokenizer_dirs", {})[model] = self._dirs[model]

    async def _fetch(self, worker: Worker, model: str) -> None:
        try:
            data, digest = await fetch_bundle(self.channels.channel(worker))
            directory = await asyncio.to_thread(unpack_bundle, data, digest, self.cache_dir)
            tokenizer = await asyncio.to_thread(HFTokenizer, directory, None, self.generation_config)
        except (grpc.aio.AioRpcError, TokenizerBundleError, RuntimeError, OSError) as exc:
            reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            logger.warning(
                "no tokenizer from the gRPC worker: it serves token-id completions only; "
                "start the router with --model-path (or --tokenizer-path) for chats and text",
                extra={"worker": worker.url, "model": model, "reason": reason},
            )
            return
        self.tokenizers.add(model, tokenizer)
        self._dirs[model] = str(directory)
        logger.info("tokenizer fetched from the gRPC worker", extra={"worker": worker.url, "model": model, "dir": str(directory)})
