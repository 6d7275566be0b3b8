#!/usr/bin/env bash
# Regenerates the figures embedded in README.md from the sample photos (CPU, about a minute).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
lrp compare sample_images/ -c zero -c epsilon -c epsilon-plus-flat -c epsilon-gamma-box \
    -c epsilon-alpha2-beta1-flat -c gradient -o "$out" --grid experiments/figures/compare-grid.png
lrp evaluate sample_images/ -c epsilon -c epsilon-plus-flat -c epsilon-gamma-box \
    --baseline random,gradient,gradient-x-input --seed 0 \
    --json experiments/figures/evaluate.json --plot experiments/figures/evaluate.png
rm -rf "$out"
