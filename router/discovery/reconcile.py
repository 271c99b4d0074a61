"""The pure part of discovery: what to change so a source's workers match its view.

A worker is identified by (URL, role), the key the registry refuses to hold twice. A key
in the view but not registered is added; a registered key missing from the view is
drained (it leaves once its in-flight requests finish); a key whose spec changed (another
bootstrap port, model, labels ...) is replaced: drained, then added again with the new
spec once the old one has left, since the registry holds one worker per key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from router.config import WorkerSpec

WorkerKey = tuple[str, str]  # (URL without trailing slash, role)


def worker_key(spec: WorkerSpec) -> WorkerKey:
    return spec.url.rstrip("/"), spec.role


class DuplicateWorkerError(ValueError):
    """A view that names one (URL, role) twice; the message names both entries."""


def index_specs(specs: Iterable[WorkerSpec]) -> dict[WorkerKey, WorkerSpec]:
    """A view keyed by worker; two entries with one key are an error (which one wins
    would be a guess)."""
    view: dict[WorkerKey, WorkerSpec] = {}
    position: dict[WorkerKey, int] = {}
    for index, spec in enumerate(specs):
        key = worker_key(spec)
        if key in view:
            raise DuplicateWorkerError(
                f"workers[{index}]: {key[0]} ({key[1]}) is already workers[{position[key]}]; list each worker once"
            )
        view[key], position[key] = spec, index
    return view


def _same(a: WorkerSpec, b: WorkerSpec) -> bool:
    return dataclasses.replace(a, url=a.url.rstrip("/")) == dataclasses.replace(b, url=b.url.rstrip("/"))


@dataclass(frozen=True)
class Changes:
    """What `plan_changes` decided, in the order it should be applied."""

    add: tuple[WorkerSpec, ...] = ()
    remove: tuple[WorkerKey, ...] = ()
    replace: tuple[WorkerSpec, ...] = ()  # the new specs; the old worker of each key drains first

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace)


def plan_changes(desired: Mapping[WorkerKey, WorkerSpec], current: Mapping[WorkerKey, WorkerSpec]) -> Changes:
    """Changes that turn `current` (the specs this source registered) into `desired`."""
    add = tuple(spec for key, spec in desired.items() if key not in current)
    remove = tuple(key for key in current if key not in desired)
    replace = tuple(spec for key, spec in desired.items() if key in current and not _same(spec, current[key]))
    return Changes(add=add, remove=remove, replace=replace)
