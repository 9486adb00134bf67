"""fedmia: membership-inference audits of centralized and federated (Flower + Ray) training."""

# The one source of the version: pyproject.toml reads this line ([tool.setuptools.dynamic], without
# importing fedmia), so the wheel's metadata, `fedmia --version` and the container's version label
# (.ci/container.sh passes it as FEDMIA_VERSION) all agree. Written here rather than read from
# importlib.metadata, so that a checkout run without installing, or an editable install made before
# the last bump, still reports the version of the code it runs. Bump it with a CHANGELOG.md section.
__version__ = "0.1.0"
