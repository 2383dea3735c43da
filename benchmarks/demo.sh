#!/usr/bin/env bash
# Wall time and peak RSS of the README's main command on a fresh clone: install + demo.
# Usage: bash benchmarks/demo.sh [CLONE_DIR]   (clones this repository there first; needs /usr/bin/time)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
clone="${1:-$(mktemp -d)/nnunet-ctorg}"
git clone -q "$repo" "$clone"
cd "$clone"
/usr/bin/time -v bash -c 'python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/nnunet_ctorg_demo' \
  > demo_benchmark.log 2>&1
grep -A 8 "Dice on" demo_benchmark.log
grep -E "Elapsed \(wall clock\)|Maximum resident set size|Exit status" demo_benchmark.log
echo "full log: $clone/demo_benchmark.log"
