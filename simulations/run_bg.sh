#!/usr/bin/env bash
# Run the named studies one after another (each a `fedmia sweep`), as docs/studies.md lists them:
#   simulations/run_bg.sh [STUDY ...]     (default: all; results under runs/study-<name>)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
for s in "${@:-classes records_per_class clients dirichlet dp_local dp_central}"; do
  for study in $s; do
    echo "== $study $(date -u +%T)"
    /usr/bin/time -f "$study: %e s wall" "$PY" -m fedmia sweep "simulations/$study.yaml" --out "runs/study-$study" \
      || echo "$study FAILED (rerun the same command: a sweep continues where it stopped)"
  done
done
