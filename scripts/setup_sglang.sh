#!/usr/bin/env bash
# Idempotent set-up of the SGLang CPU test environment: a venv of its own (.venv-sglang) so
# SGLang's pins (transformers 5.x, ...) never touch the vLLM venv (.venv).
#
# Why each step:
# - sglang is installed --no-deps: it pins a CUDA torch; we keep torch==2.13.0 (CPU wheel).
# - the import-time dependencies SGLang's server needs are listed explicitly below.
# - sglang-kernel (sgl_kernel) only ships CUDA builds; it is installed --no-deps and the
#   tests' shims (tests/support/sglang_shims) make its op loading tolerate missing CUDA libs.
# - the project is installed editable with the mooncake extra only (no vllm extra), which
#   also registers the `sglang.srt.plugins` entry point (atom_mesh -> sglang_atom:register).
# - sglang-router is SGLang's own gateway, used by the drop-in compatibility test.
# - smg-grpc-servicer (with its grpcio deps, not its [sglang] extra) is SGLang's gRPC
#   scheduler service (`launch_server --smg-grpc-mode`), for the router's grpc:// tests.
# Re-runs are fast: a stamp keyed on this script and pyproject.toml skips the pip steps.
# Set ATOM_MESH_SKIP_SGLANG=1 to skip it entirely (machines that never run SGLang tests).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${ATOM_MESH_SKIP_SGLANG:-0}" = "1" ] && exit 0
VENV=${ATOM_MESH_SGLANG_VENV:-.venv-sglang}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.atom-mesh-sglang-installed"
key="$(cat pyproject.toml scripts/setup_sglang.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  exit 0
fi

start=$(date +%s)
echo "setup_sglang: building $VENV (first run takes several minutes)"
# pip warns once per package about this machine's partial local indexes; drop that noise.
pip_install() {
  "$VENV/bin/pip" install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install --upgrade pip >/dev/null
# torch first, pinned to the CPU wheel, so nothing pulls a CUDA build.
pip_install "torch==2.13.0"
pip_install --no-deps "sglang==0.5.23" "sglang-kernel"
pip_install \
  "transformers>=5.0,<6" triton pillow tqdm IPython dill apache-tvm-ffi sentencepiece \
  compressed-tensors gguf einops openai partial_json_parser jsonschema xgrammar soundfile \
  python-multipart msgspec pyzmq fastapi uvicorn uvloop orjson aiohttp requests psutil \
  setproctitle pybase64 interegular llguidance numpy \
  mooncake-transfer-engine-non-cuda sglang-router "smg-grpc-servicer>=0.14.1" \
  pytest pytest-asyncio pytest-timeout tokenizers
pip_install -e ".[mooncake]"
# Anything above that pulled a CUDA torch or torchvision would break the CPU stack.
"$VENV/bin/python" - <<'EOF'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} replaced the CPU wheel"
EOF
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "$key" > "$stamp"
echo "setup_sglang: done in $(( $(date +%s) - start )) s"
