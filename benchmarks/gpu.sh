#!/usr/bin/env bash
# Every GPU figure of issue 15 (part 3) into one JSON file; a thin wrapper over benchmarks/gpu.py.
#
#   bash benchmarks/gpu.sh --out gpu.json          # one CUDA GPU, a few minutes
#   bash benchmarks/gpu.sh --dry-run --out dry.json  # CPU, tiny models, seconds: checks the script only
#   bash benchmarks/gpu.sh --help                  # parts, sizes and the other options
#
# Python: $PYTHON if set, else the repository's .venv, else python3. Where torchvision cannot be imported,
# tests/timm_shim goes on PYTHONPATH so that timm (the reference) imports, as in the tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import torchvision" >/dev/null 2>&1; then
  export PYTHONPATH="$root/tests/timm_shim${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" "$root/benchmarks/gpu.py" "$@"
