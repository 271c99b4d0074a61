"""An approximate, multi-tenant radix tree of routing keys: which worker has seen which prefix.

The cache-aware policy cannot see the engines' KV caches, so it keeps this model of them
(SGLang's approach): every request's routing key is inserted under the worker ("tenant")
it went to, and a new request goes where the longest prefix of its key was sent before.

One shared tree serves all tenants, so one walk finds the best match over every worker.
Each node records the tenants whose keys pass through it; a tenant on a node is always on
all of the node's ancestors too. Keys are strings (character level) or tuples of token
ids; both are plain sequences, so one implementation serves both.

Memory is bounded by `max_size`, counted as the sum over tenants of the key elements each
tenant holds (shared prefixes count once per tenant, so the tree itself never holds more).
Eviction removes least-recently-used (tenant, node) leaves first. The LRU order lives in
an intrusive doubly linked list kept so that, for each tenant, a node's entry always
comes before the entries of its ancestors: the oldest entry is therefore always a leaf
for its tenant, and eviction is O(1) per entry with no scan and no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

Key = str | tuple[int, ...]


def as_key(key: Sequence[Any]) -> Key:
    """Normalise a routing key: strings stay strings, token lists become tuples."""
    return key if isinstance(key, (str, tuple)) else tuple(key)


@dataclass(frozen=True)
class PrefixMatch:
    """The longest prefix of a key held by any allowed tenant, and the tenants holding it."""

    length: int
    tenants: tuple[str, ...]


class _Node:
    __slots__ = ("edge", "parent", "children", "tenants")

    def __init__(self, edge: Key, parent: _Node | None) -> None:
        self.edge = edge
        self.parent = parent
        self.children: dict[Any, _Node] = {}
        # tenant -> its entry in the LRU list (the entry also says the tenant holds this node).
        self.tenants: dict[str, _Entry] = {}


class _Entry:
    """One (tenant, node) pair in the LRU list."""

    __slots__ = ("prev", "next", "tenant", "node")

    def __init__(self, tenant: str, node: _Node | None) -> None:
        self.prev: _Entry = self
        self.next: _Entry = self
        self.tenant = tenant
        self.node = node


class _LruList:
    """Doubly linked list with a sentinel: oldest at the front, newest at the back."""

    def __init__(self) -> None:
        self._head = _Entry("", None)

    def first(self) -> _Entry | None:
        entry = self._head.next
        return None if entry is self._head else entry

    def unlink(self, entry: _Entry) -> None:
        entry.prev.next = entry.next
        entry.next.prev = entry.prev

    def insert_after(self, anchor: _Entry, entry: _Entry) -> None:
        entry.prev, entry.next = anchor, anchor.next
        anchor.next.prev = entry
        anchor.next = entry

    def append(self, entry: _Entry) -> None:
        self.insert_after(self._head.prev, entry)

    def move_to_back(self, entry: _Entry) -> None:
        self.unlink(entry)
        self.append(entry)


def _common_prefix_len(edge: Key, key: Key, start: int) -> int:
    """Length of the common prefix of `edge` and `key[start:]`.

    Compares slices (C speed) and bisects on a mismatch, instead of a Python loop per
    element: prompts are long and most edges match in full.
    """
    limit = min(len(edge), len(key) - start)
    if key[start : start + limit] == edge[:limit]:
        return limit
    lo, hi = 0, limit  # edge[:lo] matches, edge[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if key[start : start + mid] == edge[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class RadixTree:
    """Prefix index of routing keys per tenant, bounded by `max_size` key elements in total."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._root = _Node("", None)
        self._lru = _LruList()
        self._sizes: dict[str, int] = {}
        self._total = 0

    # --- queries -------------------------------------------------------------------------

    @property
    def total_size(self) -> int:
        """Key elements held, summed over tenants (the quantity `max_size` bounds)."""
        return self._total

    def tenant_size(self, tenant: str) -> int:
        """Key elements this tenant holds (0 for an unknown tenant)."""
        return self._sizes.get(tenant, 0)

    def tenant_sizes(self) -> dict[str, int]:
        return dict(self._sizes)

    def prefix_match(self, key: Sequence[Any], tenants: Collection[str] | None = None) -> PrefixMatch:
        """Longest prefix of `key` held by one of `tenants` (all tenants when None).

        Read-only: a match is not a use. The caller inserts the key under the tenant it
        finally picks, which refreshes that path's recency.
        """
        key = as_key(key)
        node, matched = self._root, 0
        holders: tuple[str, ...] = ()
        while matched < len(key):
            child = node.children.get(key[matched])
            if child is None:
                break
            allowed = tuple(t for t in child.tenants if tenants is None or t in tenants)
            if not allowed:
                break
            n = _common_prefix_len(child.edge, key, matched)
            matched += n
            holders = allowed
            if n < len(child.edge):
                break
            node = child
        return PrefixMatch(matched, holders)

    # --- updates -------------------------------------------------------------------------

    def insert(self, key: Sequence[Any], tenant: str) -> int:
        """Record that `tenant` has seen `key`; evict LRU leaves past `max_size`.

        Returns the number of key elements evicted.
        """
        key = as_key(key)
        node, i, path = self._root, 0, []
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                child = _Node(key[i:], node)
                node.children[key[i]] = child
                path.append(child)
                break
            n = _common_prefix_len(child.edge, key, i)
            if n < len(child.edge):
                child = self._split(child, n)
            path.append(child)
            node, i = child, i + n
        # Leaf first, so every ancestor ends up newer than its descendants (see module doc).
        for step in reversed(path):
            self._touch(step, tenant)
        return self.evict()

    def evict(self, max_size: int | None = None) -> int:
        """Drop least-recently-used tenant leaves until the total is within the bound.

        `max_size` overrides the tree's bound for this call. Returns elements evicted.
        """
        bound = self.max_size if max_size is None else max_size
        evicted = 0
        while self._total > bound:
            entry = self._lru.first()
            assert entry is not None and entry.node is not None  # total > 0 means entries exist
            evicted += self._drop(entry.node, entry.tenant)
        return evicted

    def remove_tenant(self, tenant: str) -> None:
        """Forget everything `tenant` holds (its worker left)."""
        holding, stack = [], [self._root]
        while stack:  # iterative: keys can be thousands of nodes deep
            node = stack.pop()
            for child in node.children.values():
                if tenant in child.tenants:
                    holding.append(child)
                    stack.append(child)
        for node in reversed(holding):  # descendants before ancestors
            self._drop(node, tenant)

    # --- internals -----------------------------------------------------------------------

    def _touch(self, node: _Node, tenant: str) -> None:
        entry = node.tenants.get(tenant)
        if entry is None:
            entry = _Entry(tenant, node)
            node.tenants[tenant] = entry
            self._lru.append(entry)
            self._sizes[tenant] = self._sizes.get(tenant, 0) + len(node.edge)
            self._total += len(node.edge)
        else:
            self._lru.move_to_back(entry)

    def _split(self, child: _Node, n: int) -> _Node:
        """Cut `child`'s edge after `n` elements; return the new upper node.

        The upper node holds the same tenants; each of its LRU entries goes right after
        the child's, which keeps descendants-before-ancestors for every tenant.
        """
        parent = child.parent
        assert parent is not None
        upper = _Node(child.edge[:n], parent)
        child.edge = child.edge[n:]
        child.parent = upper
        upper.children[child.edge[0]] = child
        parent.children[upper.edge[0]] = upper
        for tenant, below in child.tenants.items():
            entry = _Entry(tenant, upper)
            upper.tenants[tenant] = entry
            self._lru.insert_after(below, entry)
        return upper

    def _drop(self, node: _Node, tenant: str) -> int:
        """Take `tenant` off `node` (a leaf for that tenant); unlink the node once empty."""
        entry = node.tenants.pop(tenant)
        self._lru.unlink(entry)
        size = len(node.edge)
        self._total -= size
        left = self._sizes[tenant] - size
        if left:
            self._sizes[tenant] = left
        else:
            del self._sizes[tenant]
        if not node.tenants:
            # No tenant left here means none below either: the node is a leaf of the tree.
            assert node.parent is not None and not node.children
            del node.parent.children[node.edge[0]]
        return size
