"""The router on several cores: one coordinator process owning every decision, relay
processes carrying the data path (docs/router-processes.md).

- `link_wire`: the one schema of the coordinator <-> relay link (frames, messages, and
  how descriptors, plans, workers, errors and metric samples cross it);
- `coordinator_link`: the coordinator's end: answers the relays' admission and placement
  questions from the router's one state, takes their outcomes, pushes the worker table,
  collects their metrics;
- `relay_link`: the relay's end (`RemoteDecisions`, `router.decisions`' remote answer);
- `metrics_merge`: one /metrics from the processes' samples (pure);
- `relay`: a relay process (the inference routes; every other route forwarded);
- `supervisor`: starts, watches and stops the relays with the coordinator.
"""
