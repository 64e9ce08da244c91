#!/usr/bin/env bash
# A GPU benchmark (bench/$SCRIPT, default gpu_encode.py; also gpu_plaid.py) on
# a GPU machine that has torch (CUDA) but no network and none of our other
# dependencies: installs the wheels carried in .whl/ into /tmp/site (ahead of
# the machine's own transformers 5 / hub 1) and runs the benchmark; output
# under $OUT (default /tmp/gpu-out). Arguments go to the script. Fetch the
# wheels first, on a machine with PyPI access (Python 3.12, manylinux x86-64;
# the versions of the local extra's pins; ragatouille without its own
# dependencies, for gpu_plaid.py's import of its models.index):
#
#   mkdir -p .whl && for p in colbert-ai==0.2.22 transformers==4.57.6 tokenizers==0.22.2 \
#       huggingface-hub==0.36.2 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 ujson==6.1.0 \
#       faiss-cpu==1.15.1 dill==0.4.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 bitarray==3.12.3 pypdf==7.1.1 \
#       ragatouille==0.0.9.post2 fast-pytorch-kmeans==0.2.2 srsly==2.5.6 catalogue==2.0.10; do
#     python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl "$p"; done
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 GIT_PYTHON_REFRESH=quiet PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
# colbert-ai's CUDA extensions (~100 s of nvcc on a bare machine): reuse a carried build
if [ -f .whl/torch_extensions.tgz ]; then mkdir -p ~/.cache && tar xzf .whl/torch_extensions.tgz -C ~/.cache; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, colbert; print('torch', torch.__version__, 'transformers', transformers.__version__)" || exit 1
SCRIPT=${SCRIPT:-gpu_encode.py}; NAME=${SCRIPT%.py}
python3 "bench/$SCRIPT" --model base --json "$OUT/$NAME${TAG:-}.json" "$@" 2>&1 | tee "$OUT/$NAME${TAG:-}.full.log" \
  | grep -v -E "it/s\]|Encoding [0-9]+ passages|^\[[A-Z][a-z]{2} [0-9]+, [0-9:]+\]|^ *Iteration|^\[?[0-9., ]+\]?$" | tee "$OUT/$NAME${TAG:-}.log"
tar czf "$OUT/torch_extensions.tgz" -C ~/.cache torch_extensions 2>/dev/null || true  # carry it in .whl/ next time
