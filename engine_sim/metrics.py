"""Prometheus text for one worker, with vLLM's and SGLang's metric names (routers scrape both)."""

from __future__ import annotations

from typing import Any


def render_metrics(model: str, engine_id: str, snapshot: dict[str, Any]) -> str:
    labels = f'{{model_name="{model}",engine="{engine_id}"}}'
    hit_rate = snapshot["cached_tokens"] / snapshot["prompt_tokens"] if snapshot["prompt_tokens"] else 0.0
    rows = [
        ("vllm:num_requests_running", "gauge", snapshot["running"]),
        ("vllm:num_requests_waiting", "gauge", snapshot["waiting"]),
        ("vllm:gpu_cache_usage_perc", "gauge", snapshot["kv_usage"]),
        ("vllm:kv_cache_usage_perc", "gauge", snapshot["kv_usage"]),
        ("vllm:prefix_cache_queries", "counter", snapshot["prompt_tokens"]),
        ("vllm:prefix_cache_hits", "counter", snapshot["cached_tokens"]),
        ("vllm:prompt_tokens", "counter", snapshot["prompt_tokens"]),
        ("vllm:generation_tokens", "counter", snapshot["generated_tokens"]),
        ("vllm:request_success", "counter", snapshot["completed"]),
        ("sglang:num_running_reqs", "gauge", snapshot["running"]),
        ("sglang:num_queue_reqs", "gauge", snapshot["waiting"]),
        ("sglang:token_usage", "gauge", snapshot["kv_usage"]),
        ("sglang:cache_hit_rate", "gauge", hit_rate),
    ]
    lines = []
    for name, kind, value in rows:
        sample = f"{name}_total" if kind == "counter" else name
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{sample}{labels} {float(value)}")
    return "\n".join(lines) + "\n"
