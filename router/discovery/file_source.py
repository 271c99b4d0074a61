"""Workers from a watched JSON or YAML file (`--discovery-file`).

The file holds a list of worker entries, or `{"workers": [...]}` like `--config-file`;
each entry is parsed and validated exactly as a `--config-file` entry or a `POST /workers`
body (`router.workers.specs.parse_worker_list`). YAML is read when the name ends in
.yaml or .yml (needs PyYAML), JSON otherwise.

Why stat polling (every `POLL_SECS`) rather than inotify: it sees atomic replaces
(`mv`, Kubernetes ConfigMap symlink swaps) and files on network mounts alike, and costs
one `stat` per poll. A change is read once the file's stat has been the same for two
polls in a row, so a file caught half-written by an editor is not applied; an
unchanged file is still reread every `--discovery-check-interval-secs`.

A file that cannot be read, parsed or validated is logged once (file, entry, field) and
the last good view is kept; so is a missing file (not created yet, or mid-replace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from router.config import WorkerSpec
from router.discovery.reconcile import DuplicateWorkerError, WorkerKey, index_specs
from router.errors import WorkerRequestError
from router.workers.specs import parse_worker_list

logger = logging.getLogger("atom_mesh.discovery")

POLL_SECS = 0.25

Publish = Callable[[Mapping[WorkerKey, WorkerSpec]], Awaitable[None]]


class DiscoveryFileError(Exception):
    """A discovery file that cannot be applied; the message names the file, entry and field."""


def is_yaml(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def _decode(path: str, text: str) -> Any:
    if not is_yaml(path):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DiscoveryFileError(f"discovery file {path}: not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise DiscoveryFileError(f"discovery file {path}: reading YAML needs PyYAML: pip install atom-mesh[yaml]") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DiscoveryFileError(f"discovery file {path}: not valid YAML: {exc}") from None


def parse_worker_file(path: str, text: str, pd_disaggregation: bool) -> dict[WorkerKey, WorkerSpec]:
    """The view a discovery file's `text` describes (pure)."""
    data = _decode(path, text)
    if data is None:
        data = []  # an empty YAML document: no workers
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"workers"})
        if unknown:
            raise DiscoveryFileError(f"discovery file {path}: unknown key(s) {unknown}; allowed: ['workers']")
        data = data.get("workers", [])
    if not isinstance(data, list):
        raise DiscoveryFileError(f'discovery file {path}: must be a list of workers or {{"workers": [...]}}')
    try:
        return index_specs(parse_worker_list(data, pd_disaggregation))
    except (WorkerRequestError, DuplicateWorkerError) as err:
        message = err.message if isinstance(err, WorkerRequestError) else str(err)
        raise DiscoveryFileError(f"discovery file {path}: {message}") from None


def _stat_signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class FileSource:
    """Publishes the workers of one file whenever it changes (and every `check_interval`)."""

    def __init__(self, path: str, pd_disaggregation: bool, check_interval_secs: float) -> None:
        self.path = path
        self.name = f"file:{path}"
        self._pd = pd_disaggregation
        self._check_interval = check_interval_secs
        self._problem = ""  # the last thing logged about the file, so each is logged once

    async def run(self, publish: Publish) -> None:
        seen: tuple[int, int, int, int] | None = None  # the stat of the last poll
        applied: tuple[int, int, int, int] | None = None  # the stat of the last file read
        next_check = 0.0
        while True:
            signature = await asyncio.to_thread(_stat_signature, self.path)
            settled = signature == seen
            seen = signature
            if settled and (signature != applied or time.monotonic() >= next_check):
                applied, next_check = signature, time.monotonic() + self._check_interval
                if signature is None:
                    self._missing()
                elif (view := await self._load()) is not None:
                    await publish(view)
            await asyncio.sleep(POLL_SECS)

    def _missing(self) -> None:
        self._report(
            logging.INFO,
            f"discovery file {self.path} does not exist (yet); waiting for it, the workers it listed before stay",
        )

    async def _load(self) -> dict[WorkerKey, WorkerSpec] | None:
        try:
            text = await asyncio.to_thread(_read, self.path)
            view = parse_worker_file(self.path, text, self._pd)
        except OSError as exc:
            self._report(logging.WARNING, f"discovery file {self.path}: cannot read it: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError as exc:
            self._report(logging.WARNING, f"discovery file {self.path}: not UTF-8 text: {exc}")
            return None
        except DiscoveryFileError as err:
            self._report(logging.WARNING, f"{err}; keeping the last good view until the file is fixed")
            return None
        if self._problem:
            logger.info("discovery file is good again", extra={"file": self.path, "workers": len(view)})
        self._problem = ""
        return view

    def _report(self, level: int, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            logger.log(level, problem, extra={"file": self.path})
