"""The radix tree behind cache-aware routing: matches, per-tenant sizes, LRU eviction, bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.policies.radix_tree import PrefixMatch, RadixTree, _Node

BIG = 10**9


def check_invariants(tree: RadixTree) -> None:
    """Structure facts every operation must keep (white-box, so a bug shows where it is)."""
    sizes: dict[str, int] = {}
    stack = [tree._root]
    while stack:
        node: _Node = stack.pop()
        for first, child in node.children.items():
            assert child.parent is node
            assert len(child.edge) > 0 and child.edge[0] == first
            assert child.tenants, "a node nobody holds must be unlinked"
            if node is not tree._root:
                assert set(child.tenants) <= set(node.tenants), "a tenant on a node is on its parent"
            for tenant in child.tenants:
                sizes[tenant] = sizes.get(tenant, 0) + len(child.edge)
            stack.append(child)
    assert sizes == tree.tenant_sizes()
    assert sum(sizes.values()) == tree.total_size


def lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_prefix_match_counts_whole_and_partial_edges() -> None:
    tree = RadixTree(BIG)
    tree.insert("hello world", "a")
    assert tree.prefix_match("hello world") == PrefixMatch(11, ("a",))
    assert tree.prefix_match("hello there") == PrefixMatch(6, ("a",))  # partial edge
    assert tree.prefix_match("hello world, and more") == PrefixMatch(11, ("a",))
    assert tree.prefix_match("goodbye") == PrefixMatch(0, ())
    assert tree.prefix_match("") == PrefixMatch(0, ())
    check_invariants(tree)


def test_match_reports_every_tenant_at_the_deepest_node_and_respects_the_allowed_set() -> None:
    tree = RadixTree(BIG)
    tree.insert("shared system prompt: user one", "a")
    tree.insert("shared system prompt: user two", "b")
    assert tree.prefix_match("shared system prompt: user one?") == PrefixMatch(30, ("a",))
    both = tree.prefix_match("shared system prompt: someone else")
    assert both.length == len("shared system prompt: ") and set(both.tenants) == {"a", "b"}
    # Only b allowed: a's longer match is invisible.
    only_b = tree.prefix_match("shared system prompt: user one", {"b"})
    assert only_b == PrefixMatch(len("shared system prompt: user "), ("b",))
    assert tree.prefix_match("shared system prompt: user one", {"c"}) == PrefixMatch(0, ())
    check_invariants(tree)


def test_token_keys_work_like_text_keys() -> None:
    tree = RadixTree(BIG)
    tree.insert([1, 2, 3, 4, 5], "a")
    tree.insert((1, 2, 9), "b")
    assert tree.prefix_match([1, 2, 3, 4, 7]) == PrefixMatch(4, ("a",))
    assert set(tree.prefix_match((1, 2)).tenants) == {"a", "b"}
    assert tree.tenant_size("a") == 5 and tree.tenant_size("b") == 3
    # A token key never matches a text key, even with equal-looking content.
    assert tree.prefix_match("\x01\x02").length == 0
    check_invariants(tree)


def test_per_tenant_sizes_count_shared_prefixes_once_per_tenant() -> None:
    tree = RadixTree(BIG)
    tree.insert("hello", "a")
    tree.insert("help", "b")
    tree.insert("hello world", "a")
    tree.insert("hello", "a")  # already held: no growth
    assert tree.tenant_sizes() == {"a": 11, "b": 4}
    assert tree.total_size == 15
    assert tree.tenant_size("nobody") == 0
    check_invariants(tree)


def test_eviction_drops_the_least_recently_used_key_first() -> None:
    tree = RadixTree(max_size=8)
    tree.insert("aaaa", "t1")
    tree.insert("bbbb", "t2")
    tree.insert("aaaa", "t1")  # refresh: now bbbb is the oldest
    evicted = tree.insert("cccc", "t3")
    assert evicted == 4
    assert tree.prefix_match("bbbb").length == 0
    assert tree.prefix_match("aaaa") == PrefixMatch(4, ("t1",))
    assert tree.prefix_match("cccc") == PrefixMatch(4, ("t3",))
    assert tree.total_size == 8
    check_invariants(tree)


def test_eviction_takes_leaves_before_the_prefixes_they_hang_from() -> None:
    tree = RadixTree(BIG)
    tree.insert("abcdef", "t1")
    tree.insert("abcxyz", "t2")  # splits t1's edge: abc / def, abc / xyz
    assert tree.evict(max_size=tree.total_size - 3) == 3
    # t1's oldest leaf (def) went first; its prefix abc is still t1's.
    assert tree.prefix_match("abcdef", {"t1"}) == PrefixMatch(3, ("t1",))
    assert tree.tenant_sizes() == {"t1": 3, "t2": 6}
    check_invariants(tree)
    tree.evict(max_size=6)
    assert tree.tenant_sizes() == {"t2": 6}
    assert tree.prefix_match("abcxyz") == PrefixMatch(6, ("t2",))
    check_invariants(tree)


def test_a_split_prefix_outlives_an_older_sibling_of_its_tenant() -> None:
    """LRU order survives splits: the new upper node is as recent as the node it cut."""
    tree = RadixTree(BIG)
    tree.insert("old key", "t")
    tree.insert("new key one", "t")
    tree.insert("new key two", "u")  # splits "new key one" after the split point
    tree.evict(max_size=tree.total_size - len("old key"))
    assert tree.prefix_match("old key", {"t"}).length == 0
    assert tree.prefix_match("new key one", {"t"}).length == len("new key one")
    check_invariants(tree)


def test_remove_tenant_keeps_what_others_hold() -> None:
    tree = RadixTree(BIG)
    tree.insert("common prefix A", "a")
    tree.insert("common prefix B", "b")
    tree.insert("only a", "a")
    tree.remove_tenant("a")
    assert tree.tenant_sizes() == {"b": len("common prefix B")}
    assert tree.prefix_match("only a").length == 0
    assert tree.prefix_match("common prefix A") == PrefixMatch(len("common prefix "), ("b",))
    tree.remove_tenant("unknown")  # harmless
    check_invariants(tree)


def test_remove_tenant_handles_trees_deeper_than_the_recursion_limit() -> None:
    tree = RadixTree(BIG)
    depth = 1500
    key = tuple(range(depth))
    tree.insert(key, "a")
    # Split the single edge into `depth` nodes from the bottom up (each insert is one walk).
    for cut in range(depth - 1, 0, -1):
        tree.insert(key[:cut], "b")
    assert tree.prefix_match(key).length == depth
    tree.remove_tenant("a")
    assert tree.prefix_match(key) == PrefixMatch(depth - 1, ("b",))
    tree.remove_tenant("b")
    assert tree.total_size == 0 and tree.tenant_sizes() == {}


def test_negative_bound_is_refused() -> None:
    try:
        RadixTree(-1)
    except ValueError as e:
        assert "max_size" in str(e)
    else:
        raise AssertionError("RadixTree(-1) must raise")


keys = st.text(alphabet="abc", min_size=0, max_size=12)
tenants = st.sampled_from(["t1", "t2", "t3"])


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(keys, tenants), min_size=1, max_size=60), bound=st.integers(0, 40))
def test_memory_bound_holds_and_the_newest_key_survives(ops: list[tuple[str, str]], bound: int) -> None:
    tree = RadixTree(max_size=bound)
    inserted: dict[str, list[str]] = {}
    for key, tenant in ops:
        tree.insert(key, tenant)
        inserted.setdefault(tenant, []).append(key)
        assert tree.total_size <= bound
        check_invariants(tree)
        # The newest key is evicted last: it survives whole when it fits at all.
        if len(key) <= bound:
            assert tree.prefix_match(key, {tenant}).length == len(key)
        # Sound: a tenant never matches more than it was sent.
        for other, seen in inserted.items():
            probe = key + "c"
            assert tree.prefix_match(probe, {other}).length <= max(lcp(probe, k) for k in seen)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(keys, tenants), min_size=1, max_size=40), probe=keys)
def test_without_eviction_matches_equal_the_longest_common_prefix(ops: list[tuple[str, str]], probe: str) -> None:
    tree = RadixTree(BIG)
    for key, tenant in ops:
        tree.insert(key, tenant)
    for tenant in {t for _, t in ops}:
        expected = max(lcp(probe, k) for k, t in ops if t == tenant)
        assert tree.prefix_match(probe, {tenant}).length == expected
    check_invariants(tree)
