"""Tiny random-weight models built offline, for real engines in tests, benchmarks and the demo.

No model can be downloaded here, so we build one: a byte-level BPE tokenizer trained on a
fixed corpus plus a seeded random-weight Hugging Face model saved with `save_pretrained`.
Facts that shape it (see docs/engines-on-cpu.md):
- vLLM's CPU attention rejects head_dim 16; head_dim 64 works.
- `vocab_size` must equal the tokenizer's size: ids past the tokenizer decode to '' and
  would make text comparisons pass trivially.
- Weights are real random values (not `--load-format dummy`), so a wrong KV transfer
  changes the output.

Builds are cached under `<repo>/.cache/models/<kind>-<content-hash>/`; the hash covers
everything that changes the files (spec, corpus, seed, library versions), so a stale
model can never be picked up by mistake. A file lock makes concurrent builders (several
test sessions on one machine) build once.

Adding a kind: write a function returning a `ModelSpec` and add it to `_KINDS`.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed import REPO_ROOT

# Bump when the build procedure changes in a way the hashed inputs do not capture.
_BUILDER_VERSION = 1
_SEED = 1234
_TOKENIZER_VOCAB = 1024
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# A chat template is required for /v1/chat/completions; kept minimal and role-tagged.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = (
    "The router sends the prefill request to one worker and the decode request to another.",
    "Prefill computes the key value cache for the whole prompt in one forward pass.",
    "Decode reads the transferred cache and generates one token at a time.",
    "A disaggregated deployment scales prefill and decode workers independently.",
    "The quick brown fox jumps over the lazy dog while the cache is warm.",
    "Mooncake moves pages of memory between processes over TCP or RDMA.",
    "Engines publish events when blocks are stored or removed from the prefix cache.",
    "Hello world, this is a small model built offline for tests and demos.",
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a story about a robot that learned to route requests fairly.",
    "Numbers like 1 2 3 4 5 6 7 8 9 10 appear in prompts and answers.",
    "The circuit breaker opens after repeated failures and closes after successes.",
    "Streaming responses arrive as server sent events with a final done marker.",
    "user assistant system: you are a helpful assistant that answers briefly.",
)


@dataclass(frozen=True)
class ModelSpec:
    """What to build for one kind: transformers config/model classes and config kwargs.

    `vocab_size` and the special token ids are filled in from the trained tokenizer.
    """

    config_class: str
    model_class: str
    config: dict[str, Any] = field(default_factory=dict)


# The shape every tiny model shares: 2 layers, hidden 128, 2 heads of 64, 1 KV head (vLLM's CPU
# attention rejects head_dim 16); init wider than the 0.02 default so greedy choices are
# decisive, not near-ties.
_TINY_DECODER: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "initializer_range": 0.2,
}


def _llama() -> ModelSpec:
    """The tiny shape with Llama's norm epsilon and untied embeddings."""
    return ModelSpec(
        config_class="LlamaConfig",
        model_class="LlamaForCausalLM",
        config={**_TINY_DECODER, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    )


def _qwen3() -> ModelSpec:
    """Llama's shape plus Qwen3's per-head q/k RMSNorm; tied embeddings (as small Qwen3s ship)."""
    return ModelSpec(
        config_class="Qwen3Config",
        model_class="Qwen3ForCausalLM",
        config={**_TINY_DECODER, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    )


def _qwen3_moe() -> ModelSpec:
    """Qwen3 with 4 experts (top-2, renormalized) in layer 0 and a dense MLP in layer 1."""
    return ModelSpec(
        config_class="Qwen3MoeConfig",
        model_class="Qwen3MoeForCausalLM",
        config={
            **_TINY_DECODER,
            "moe_intermediate_size": 64,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [1],
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
    )


_KINDS: dict[str, Callable[[], ModelSpec]] = {"llama": _llama, "qwen3": _qwen3, "qwen3_moe": _qwen3_moe}


def model_kinds() -> list[str]:
    """Kinds `build_tiny_model` knows."""
    return sorted(_KINDS)


def _cache_root() -> Path:
    return Path(os.environ.get("ATOM_MESH_CACHE_DIR", REPO_ROOT / ".cache")) / "models"


def _content_hash(kind: str, spec: ModelSpec) -> str:
    # Versions from metadata, not imports: the cache-hit path must not pay for importing torch.
    versions = [importlib.metadata.version(d) for d in ("transformers", "tokenizers", "torch")]
    payload = {
        "builder": _BUILDER_VERSION,
        "kind": kind,
        "spec": asdict(spec),
        "corpus": _CORPUS,
        "seed": _SEED,
        "tokenizer_vocab": _TOKENIZER_VOCAB,
        "chat_template": CHAT_TEMPLATE,
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _train_tokenizer(out: Path) -> Any:
    """Train the byte-level BPE and save it as a transformers fast tokenizer in `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return tok


def _build(kind: str, spec: ModelSpec, out: Path) -> None:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # keep demo and test output readable
    tok = _train_tokenizer(out)
    config_cls = getattr(transformers, spec.config_class)
    config = config_cls(
        vocab_size=tok.get_vocab_size(),
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        **spec.config,
    )
    torch.manual_seed(_SEED)
    model = getattr(transformers, spec.model_class)(config).to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "atom_mesh_tiny_model.json").write_text(json.dumps({"kind": kind, "seed": _SEED}) + "\n")


def build_tiny_model(kind: str = "llama") -> Path:
    """The directory of the tiny `kind` model, building it on first use (a few seconds).

    Deterministic: the same inputs give the same files, so engines started from it in
    different processes (prefill, decode, reference) load identical weights.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {', '.join(model_kinds())}")
    spec = _KINDS[kind]()
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{kind}-{_content_hash(kind, spec)}"
    if target.is_dir():
        return target
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another builder finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            _build(kind, spec, tmp)
            os.rename(tmp, target)  # atomic: readers see a complete model or none
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
