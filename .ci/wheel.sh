#!/usr/bin/env bash
# CI: fedmia as a user installs it, outside the checkout.
#
# 1. Builds the sdist, then the wheel from the unpacked sdist (what `python -m build` does, without its
#    isolated build environment: .venv's setuptools builds), and checks that every packaged config is in both.
# 2. Makes a fresh venv outside the checkout that reuses .venv's installed dependencies: a .pth file adds
#    .venv's site-packages as a plain path, so the .pth files in it (the editable fedmia's) are not run and
#    the checkout's fedmia is not importable. The wheel goes in with --no-deps (seconds, no index).
# 3. From an empty folder: fedmia --version, fedmia configs, fedmia init, and two small runs by bare config
#    name (quickstart, and compare with its federation in-process), which must write their results.
# Needs .venv (make install). About 50 s of CPU (user) time, most of it the two runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=$repo/.venv/bin/python
fail() { echo "wheel check: $*" >&2; exit 1; }
t_step=$SECONDS
took() { echo "== $1: $((SECONDS - t_step)) s"; t_step=$SECONDS; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case $work/ in "$repo"/*) fail "the temporary folder $work is inside the checkout" ;; esac
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[[ -n $version ]] || fail "no [project] version in pyproject.toml"

# --- 1. sdist, then the wheel from it -------------------------------------------------------------------
# from a copy of the checkout's files (tracked and not ignored): setuptools writes fedmia.egg-info beside
# pyproject.toml, which in the checkout would shadow the editable install's metadata
mkdir "$work/checkout"
git ls-files -z --cached --others --exclude-standard | tar -c --null --ignore-failed-read -T - 2>/dev/null | tar -x -C "$work/checkout"
(cd "$work/checkout" && "$py" -c 'import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])' "$work/dist" >/dev/null)
sdist=$work/dist/fedmia-$version.tar.gz
[[ -f $sdist ]] || fail "no $sdist (found: $(ls "$work/dist"))"
mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src/fedmia-$version"
wheel=$work/dist/fedmia-$version-py3-none-any.whl
[[ -f $wheel ]] || fail "no $wheel (found: $(ls "$work/dist"))"
"$py" - "$sdist" "$wheel" "$version" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

sdist, wheel, version = sys.argv[1:]
want = sorted(p.name for p in Path("fedmia/configs").glob("*.yaml"))
assert want, "no fedmia/configs/*.yaml in the checkout"
in_wheel = sorted(Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fedmia/configs/"))
in_sdist = sorted(Path(n).name for n in tarfile.open(sdist).getnames() if f"fedmia-{version}/fedmia/configs/" in n)
for what, got in (("wheel", in_wheel), ("sdist", in_sdist)):
    assert got == want, f"the {what} has configs {got}, the checkout {want}"
print(f"{len(want)} packaged configs in the sdist and the wheel")
EOF
took "sdist and wheel"

# --- 2. a fresh venv outside the checkout: .venv's dependencies, the wheel's fedmia --------------------------
"$py" -m venv "$work/venv"
venv_py=$work/venv/bin/python
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
purelib "$py" >"$(purelib "$venv_py")/fedmia-ci-dependencies.pth"
"$venv_py" -m pip install -q --no-deps --no-index --ignore-installed "$wheel"
took "venv and wheel install"

# --- 3. from an empty folder --------------------------------------------------------------------------------
mkdir "$work/empty"
cd "$work/empty"
export PATH=$work/venv/bin:$PATH
unset PYTHONPATH
"$venv_py" - "$work/venv" "$version" <<'EOF'
import importlib.metadata as md
import sys

import fedmia

venv, version = sys.argv[1:]
assert fedmia.__file__.startswith(venv + "/"), f"fedmia imported from {fedmia.__file__}, not the wheel in {venv}"
dist = md.distribution("fedmia")
assert str(dist.locate_file("")).startswith(venv + "/"), f"fedmia's metadata is {dist.locate_file('')}'s"
assert dist.version == fedmia.__version__ == version, (dist.version, fedmia.__version__, version)
requires = dist.requires or []
assert any(r.startswith("opacus") and ">=" in r for r in requires), f"the wheel's requirements: {requires}"
print(f"fedmia {fedmia.__version__} from {fedmia.__file__}")
EOF
out=$(fedmia --version)
[[ $out == "fedmia $version" ]] || fail "fedmia --version printed '$out', expected 'fedmia $version'"
configs=$(fedmia configs)
for name in quickstart compare federated; do
  grep -q "$name" <<<"$configs" || fail "fedmia configs does not list $name: $configs"
done
fedmia init quickstart edit >/dev/null
cmp -s edit/quickstart.yaml "$repo/fedmia/configs/quickstart.yaml" || fail "fedmia init wrote a different file"
if fedmia init quickstart edit >/dev/null 2>&1; then fail "fedmia init overwrote edit/quickstart.yaml"; fi
took "version, configs, init"

fedmia run quickstart audit.references=2 train.epochs=2 "audit.attacks=[loss, rmia]" --out q >q.log 2>&1 || { cat q.log; fail "the quickstart failed"; }
grep -q "the packaged quickstart.yaml" q.log || { cat q.log; fail "no note that the packaged quickstart was used"; }
took "fedmia run quickstart"
fedmia run compare federation.backend=inprocess train.epochs=2 federation.rounds=2 federation.local_epochs=1 \
  audit.references=2 audit.server_references=2 audit.targets=1 "audit.attacks=[loss, rmia]" \
  "audit.federated_attacks=[loss-trajectory, fedmia]" --out c >c.log 2>&1 || { cat c.log; fail "compare failed"; }
took "fedmia run compare (in-process federation)"
"$venv_py" - q c <<'EOF'
import json
import sys
from pathlib import Path

for run in sys.argv[1:]:
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    settings = {row["setting"] for row in metrics["attacks"]}
    assert metrics["utility"] and metrics["attacks"], f"{run}/metrics.json has no results"
    assert (Path(run) / "report.md").is_file() and (Path(run) / "config.yaml").is_file(), run
    print(f"{run}: {len(metrics['attacks'])} attack rows, settings {sorted(settings)}")
EOF
echo "== wheel check passed: fedmia $version from $wheel"
