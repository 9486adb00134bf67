"""fedmia: membership-inference audits of centralized and federated (Flower + Ray) training."""

from importlib.metadata import PackageNotFoundError, version

# The one source of the version is pyproject.toml's [project] version (static: Flower's `flwr run .` requires
# it there), which the wheel's and the editable install's metadata carry; `fedmia --version` and the
# container's version label (.ci/container.sh) read it from there too. `make install` reinstalls when
# pyproject.toml changes, so an editable install never reports a stale version. Bump it with a
# CHANGELOG.md section.
try:
    __version__ = version("fedmia")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
