#!/usr/bin/env bash
# Two venvs for the KV-cache peer comparisons, outside the repo (they never touch /work/main/.venv):
#   $KVPRESS_VENV (default /work/peers/kvpress-venv): NVIDIA kvpress, which pins transformers>=4.56,<5.3
#       -> bench/kvpress_peer.py run
#   $HFQ_VENV (default /work/peers/hfq-venv): transformers 5.25 + a QuantizedCache backend (hqq and/or
#       optimum-quanto) + compresskit (editable, --no-deps) -> bench/hf_quantized_cache.py
# torch==2.13.0 goes in first in both: the CPU build installs from local disk; a bare `torch` requirement
# pulled in later by a dependency would otherwise fetch a multi-GB CUDA build.
#
#   bash bench/setup_peer_venvs.sh            # both
#   bash bench/setup_peer_venvs.sh kvpress    # one of them (kvpress | hfq)
set -u
PY=${PYTHON:-python3}
KVPRESS_VENV=${KVPRESS_VENV:-/work/peers/kvpress-venv}
HFQ_VENV=${HFQ_VENV:-/work/peers/hfq-venv}
REPO=$(cd "$(dirname "$0")/.." && pwd)
which=${1:-all}

versions() {  # versions VENV PKG...: the installed version of each package
    local venv=$1; shift
    "$venv/bin/python" -c "import sys, importlib.metadata as m
for p in sys.argv[1:]:
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, 'not installed')" "$@"
}

mkvenv() {  # mkvenv DIR: a fresh venv with the CPU torch
    "$PY" -m venv "$1" && "$1/bin/pip" install -q "torch==2.13.0"
}

if [[ $which == all || $which == kvpress ]]; then
    echo "== kvpress venv: $KVPRESS_VENV"
    mkvenv "$KVPRESS_VENV" &&
        "$KVPRESS_VENV/bin/pip" install -q "torch==2.13.0" kvpress "transformers<5.3" gguf &&
        versions "$KVPRESS_VENV" torch transformers kvpress ||
        echo "kvpress venv FAILED (see the pip error above)"
fi

if [[ $which == all || $which == hfq ]]; then
    echo "== hf quantized-cache venv: $HFQ_VENV"
    mkvenv "$HFQ_VENV" && "$HFQ_VENV/bin/pip" install -q "torch==2.13.0" "transformers==5.25.0" ||
        echo "hfq venv FAILED (see the pip error above)"
    for backend in hqq optimum-quanto; do  # each backend on its own: one failing does not stop the other
        "$HFQ_VENV/bin/pip" install -q "torch==2.13.0" "transformers==5.25.0" "$backend" ||
            echo "backend $backend FAILED to install (see the pip error above)"
    done
    # compresskit itself without its dependency list (torch is already there), then its other runtime deps
    deps=$("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if not d.startswith(("torch", "transformers"))))
EOF
)
    "$HFQ_VENV/bin/pip" install -q -e "$REPO" --no-deps &&
        "$HFQ_VENV/bin/pip" install -q "torch==2.13.0" "transformers==5.25.0" $deps &&
        versions "$HFQ_VENV" torch transformers compresskit hqq optimum-quanto ||
        echo "compresskit into hfq venv FAILED (see the pip error above)"
fi

# A third venv for the weight-quantizer peers (bench/quant_peers.py): $GPTQMODEL_VENV (default
# /work/peers/gptqmodel-venv): GPTQModel 7.7.0 (it asks for torch>=2.14.1, so --no-deps on the CPU torch 2.13;
# the imports it really needs listed by hand; maturin and ninja, build tools for its JIT kernels, are not),
# HQQ 0.2.8.post1, bitsandbytes 0.50.2 (NF4 on CPU), transformers 5.25 and compresskit (editable, --no-deps).
#   bash bench/setup_peer_venvs.sh gptqmodel
GPTQMODEL_VENV=${GPTQMODEL_VENV:-/work/peers/gptqmodel-venv}
if [[ $which == all || $which == gptqmodel ]]; then
    echo "== weight-quantizer peers venv: $GPTQMODEL_VENV"
    deps=$("$PY" - "$REPO/pyproject.toml" <<'PYEOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if not d.startswith(("torch", "transformers"))))
PYEOF
)
    mkvenv "$GPTQMODEL_VENV" &&
        "$GPTQMODEL_VENV/bin/pip" install -q "torch==2.13.0" "transformers==5.25.0" $deps \
            einops termcolor protobuf packaging &&
        "$GPTQMODEL_VENV/bin/pip" install -q --no-deps -e "$REPO" &&
        "$GPTQMODEL_VENV/bin/pip" install -q --no-deps "gptqmodel==7.7.0" defuser device-smi logbar pypcre tokenicer \
            torchao threadpoolctl "hqq==0.2.8.post1" "bitsandbytes==0.50.2" &&
        versions "$GPTQMODEL_VENV" torch transformers compresskit gptqmodel hqq bitsandbytes torchao ||
        echo "gptqmodel venv FAILED (see the pip error above)"
fi
