# fedmia in a container: CPU torch by default, fedmia installed from its wheel with the exact pinned set
# of CI (constraints.txt), run as a non-root user.
#
#   docker build -t fedmia .                                      # CPU torch (from the PyTorch CPU index)
#   docker build --build-arg TORCH_VARIANT=cuda -t fedmia:cuda .  # CUDA torch (PyPI's default Linux build)
#   docker run --rm -v "$PWD/runs:/runs" fedmia run compare --out /runs/compare
#
# Build args:
#   BASE             base image with (or able to apt-get) Python 3.11; CI passes a local Debian bookworm
#                    image, as no image registry is reachable there (see .ci/container.sh)
#   TORCH_VARIANT    cpu (default) | cuda
#   TORCH_INDEX_URL  overrides the index torch comes from (e.g. https://download.pytorch.org/whl/cu126)
#   TORCH_VERSION    2.13.0, as pinned in constraints.txt (.ci/container.sh checks they agree)
#   FEDMIA_VERSION   the image's org.opencontainers.image.version label; the build fails unless it is the
#                    package's own version, pyproject.toml's (.ci/container.sh passes it; unset: label "unset")
# A torch wheel put in ./docker-wheels/ (git-ignored) is used for the CPU variant instead of any index.

ARG BASE=python:3.11-slim

# ---- python: the base image plus a Python that can make a venv -------------------------------------
FROM ${BASE} AS python
# RUN lines are plain POSIX sh: podman/buildah ignore SHELL in their default (OCI) image format.
# python:3.11-slim already has Python 3.11 (/usr/local/bin/python3) with venv, so nothing is
# installed there (its Debian release may ship a different python3, which must not shadow it).
# A plain Debian bookworm base has no Python: then install Debian's python3 (3.11) and python3-venv.
# The probe actually creates a venv, which also catches a python3 lacking ensurepip.
# hadolint ignore=DL3008
RUN if python3 -m venv /tmp/venv-probe >/dev/null 2>&1; then \
        rm -rf /tmp/venv-probe; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# ---- build: the venv (torch first, then the package); wheels and sources stay in this stage ---------
FROM python AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip
# Optional local wheels. pyproject.toml is listed so the COPY has a source when docker-wheels/ is absent.
COPY pyproject.toml docker-wheel[s] /tmp/wheels/
# torch first and pinned, as in CI: an unpinned torch resolves to a multi-GB CUDA build.
RUN set -eu; \
    case "${TORCH_VARIANT}" in cpu|cuda) ;; *) echo "TORCH_VARIANT must be cpu or cuda" >&2; exit 1 ;; esac; \
    set -- /tmp/wheels/torch-"${TORCH_VERSION}"[+-]*.whl; \
    if [ "${TORCH_VARIANT}" = cpu ] && [ -e "$1" ]; then \
        /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --find-links /tmp/wheels "torch==${TORCH_VERSION}"; \
        /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    elif [ -n "${TORCH_INDEX_URL}" ]; then \
        /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    elif [ "${TORCH_VARIANT}" = cpu ]; then \
        /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
    else \
        /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi; \
    if [ "${TORCH_VARIANT}" = cpu ]; then \
        /opt/venv/bin/python -W ignore -c 'import torch; assert torch.version.cuda is None, "expected a CPU torch build"'; \
    fi
COPY pyproject.toml README.md constraints.txt /src/
COPY fedmia/ /src/fedmia/
# fedmia's wheel (its configs inside), then the wheel with its dependencies at CI's exact pins (no dev
# extras): torch is already there; its own dependencies move to their pins if the torch index had others.
ARG FEDMIA_VERSION=""
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps -w /tmp/dist /src \
    && /opt/venv/bin/pip install --no-cache-dir -c /src/constraints.txt /tmp/dist/fedmia-*.whl \
    && /opt/venv/bin/pip check \
    && if [ -n "${FEDMIA_VERSION}" ]; then \
        /opt/venv/bin/python -c 'import sys, fedmia; v = fedmia.__version__; sys.exit(None if v == sys.argv[1] else f"FEDMIA_VERSION={sys.argv[1]} but the package is {v}")' "${FEDMIA_VERSION}"; \
    fi

# ---- runtime ----------------------------------------------------------------------------------------
FROM python
ARG FEDMIA_VERSION=""
LABEL org.opencontainers.image.title="fedmia" \
      org.opencontainers.image.description="Federated-learning simulator with membership-inference audits" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${FEDMIA_VERSION:-unset}"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 \
    FLWR_TELEMETRY_ENABLED=0
RUN groupadd --gid 10001 fedmia \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/fedmia --shell /usr/sbin/nologin fedmia \
    && mkdir -p /runs \
    && chown fedmia:fedmia /runs
COPY --from=build /opt/venv /opt/venv
# An empty working folder: `fedmia run quickstart` finds no file there and runs the packaged config
# (`fedmia configs` lists them; mount a folder with your own YAML and give its path).
WORKDIR /app
USER 10001:10001
VOLUME /runs
ENTRYPOINT ["fedmia"]
CMD ["run", "quickstart", "--out", "/runs/quickstart"]
