"""Worker discovery: workers from a watched file or from Kubernetes pods.

Each source (`file_source.FileSource`, `kubernetes_source.KubernetesSource`) publishes
its whole view, a mapping of worker key to `WorkerSpec`, whenever that view may have
changed; `sync.SourceSync` turns successive views into the same `WorkerManager` calls the
admin API makes (add; drain, which removes once idle), using the pure plan of
`reconcile.plan_changes`. A source only ever touches the workers it registered itself, so
a file that forgets a worker never drains one from flags or the admin API.

Wiring (router/app.py): `service.DiscoveryService(config, manager)` built with the
manager; `await discovery.start()` after `manager.start()` in the lifespan, and
`await discovery.stop()` before `manager.stop()`. Flags: `router.cli`'s "Worker
discovery" group, settings `router.config.DiscoveryConfig`; reference docs/discovery.md.
"""
