"""The pure discovery plan: which workers to add, drain, or replace for a new view."""

from __future__ import annotations

import pytest

from router.config import WorkerSpec
from router.discovery.reconcile import Changes, DuplicateWorkerError, index_specs, plan_changes, worker_key

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def view(*specs: WorkerSpec) -> dict:
    return index_specs(specs)


def test_same_view_changes_nothing():
    current = view(WorkerSpec(A), WorkerSpec(B, labels={"x": "1"}))
    assert plan_changes(current, current).empty


def test_new_keys_are_added_and_missing_ones_removed():
    changes = plan_changes(view(WorkerSpec(A), WorkerSpec(C)), view(WorkerSpec(A), WorkerSpec(B)))
    assert changes == Changes(add=(WorkerSpec(C),), remove=((B, "regular"),))


def test_a_changed_spec_is_replaced_not_added():
    old = view(WorkerSpec(A, role="prefill", bootstrap_port=8998))
    new = view(WorkerSpec(A, role="prefill", bootstrap_port=8999))
    assert plan_changes(new, old) == Changes(replace=(WorkerSpec(A, role="prefill", bootstrap_port=8999),))


def test_role_is_part_of_the_key():
    """One URL as prefill and as decode is two workers; moving it between roles is an add and a removal."""
    changes = plan_changes(view(WorkerSpec(A, role="decode")), view(WorkerSpec(A, role="prefill")))
    assert changes == Changes(add=(WorkerSpec(A, role="decode"),), remove=((A, "prefill"),))


def test_trailing_slash_is_the_same_worker():
    assert worker_key(WorkerSpec(A + "/")) == worker_key(WorkerSpec(A))
    assert plan_changes(view(WorkerSpec(A + "/")), view(WorkerSpec(A))).empty


def test_a_view_naming_a_worker_twice_is_refused():
    with pytest.raises(DuplicateWorkerError, match=r"workers\[2\]: http://a:1 \(regular\) is already workers\[0\]"):
        index_specs([WorkerSpec(A), WorkerSpec(B), WorkerSpec(A + "/", labels={"x": "y"})])


def test_empty_view_removes_everything():
    changes = plan_changes({}, view(WorkerSpec(A), WorkerSpec(B)))
    assert set(changes.remove) == {(A, "regular"), (B, "regular")} and not changes.add
