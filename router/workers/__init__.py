"""Worker lifecycle: the worker model, registry, health checks and circuit breakers."""
