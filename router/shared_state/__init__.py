"""State router replicas share through Redis, when `--redis-url` is set (docs/replicas.md).

Only what engines cannot tell every replica themselves is shared: the global rate limit's
token bucket (`redis_rate_limit`) and cache_aware's routing decisions (`tree_sync` is the
wire schema, `redis_tree_sync` the pub/sub I/O). Prefix locations under kv_aware come from
the engines' KV events and load from the workers, so those need nothing here.
"""
