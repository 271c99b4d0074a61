"""The model's sampling defaults: what a request's unset sampling fields become.

vLLM's OpenAI server fills every sampling field a request leaves unset from the model's
`generation_config.json` (`ModelConfig.get_diff_sampling_param`, with the default
`--generation-config auto`), then from its own neutral defaults. vLLM's gRPC servicer
does not: an unset temperature is 1.0 there whatever the model says. So the router fills
them itself before a request goes to a gRPC worker, and the same request gets the same
answer over gRPC as over HTTP.

The rule is vLLM's: of the generation config, only these keys count (`max_new_tokens` is
vLLM's `max_tokens`, used when the request sets none), and only values that are set
(transformers 5 keeps every value the file sets, defaults included, in `to_diff_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.generation.types import SamplingParams

# get_diff_sampling_param's keys, as the SamplingParams field each fills.
SAMPLING_KEYS = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
)
_INT_KEYS = frozenset(("top_k",))
GENERATION_CONFIG_FILE = "generation_config.json"
# --generation-config values that are not a directory (vLLM's).
AUTO, VLLM = "auto", "vllm"


class GenerationConfigError(ValueError):
    """The generation config cannot be read (a bad file, a directory without one)."""


@dataclass(frozen=True)
class SamplingDefaults:
    """The model's defaults for unset sampling fields (empty: the engine's own)."""

    values: dict[str, float | int] = field(default_factory=dict)
    max_tokens: int | None = None

    def apply(self, params: SamplingParams) -> SamplingParams:
        """`params` with every unset (None) field that has a default filled in."""
        fill: dict[str, Any] = {k: v for k, v in self.values.items() if getattr(params, k) is None}
        if params.max_tokens is None and self.max_tokens is not None:
            fill["max_tokens"] = self.max_tokens
        return dataclasses.replace(params, **fill) if fill else params


NO_DEFAULTS = SamplingDefaults()


def _number(name: str, value: Any, source: Path) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationConfigError(f"{source}: {name} must be a number, got {value!r}")
    return int(value) if name in _INT_KEYS else float(value)


def read_generation_config(path: Path) -> SamplingDefaults:
    """The sampling defaults in `path` (a generation_config.json)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GenerationConfigError(f"{path}: cannot read the generation config: {exc}") from None
    if not isinstance(config, dict):
        raise GenerationConfigError(f"{path}: the generation config must be a JSON object")
    values = {k: _number(k, config[k], path) for k in SAMPLING_KEYS if config.get(k) is not None}
    max_new = config.get("max_new_tokens")
    max_tokens = int(_number("max_new_tokens", max_new, path)) if max_new is not None else None
    return SamplingDefaults(values, max_tokens)


def sampling_defaults(setting: str, model_dir: Path | None) -> SamplingDefaults:
    """The defaults `--generation-config setting` names: "auto" reads the model
    directory's generation_config.json (none there: no defaults, as vLLM), "vllm" none,
    anything else is a directory that must hold one."""
    if setting == VLLM:
        return NO_DEFAULTS
    if setting == AUTO:
        if model_dir is None or not (model_dir / GENERATION_CONFIG_FILE).is_file():
            return NO_DEFAULTS
        return read_generation_config(model_dir / GENERATION_CONFIG_FILE)
    path = Path(setting).expanduser()
    file = path / GENERATION_CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        raise GenerationConfigError(
            f"--generation-config {setting}: no {GENERATION_CONFIG_FILE} there; pass 'auto', 'vllm' or a directory holding one"
        )
    return read_generation_config(file)
