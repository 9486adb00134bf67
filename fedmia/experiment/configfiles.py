"""The config files shipped inside the package (``fedmia/configs/*.yaml``) and how a command's CONFIG
argument names a file.

One rule for every command that takes a config (``run``, ``sweep``, ``audit-dp``, the ``flwr run`` app):
a path that exists is that file, always; otherwise a bare name (``compare`` or ``compare.yaml``, no
folder) is the packaged config of that name, so ``fedmia run compare`` works from any folder once the
package is installed. Anything else is bad input (``ConfigError``, exit 2) listing the packaged names.
Kept free of torch and the config schema, so ``fedmia configs`` and ``fedmia init`` start at once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fedmia.errors import InputError

PACKAGED = Path(__file__).resolve().parent.parent / "configs"
SUFFIXES = (".yaml", ".yml")


class ConfigFileError(InputError):
    """A CONFIG argument that names no file and no packaged config."""


def packaged_configs() -> dict[str, Path]:
    """The packaged configs by name (the file name without ``.yaml``), sorted by name."""
    return {p.stem: p for p in sorted(PACKAGED.glob("*.yaml"))}


def first_comment(path: Path) -> str:
    """The text of the first ``#`` comment line of a config (its one-line description), '' if none."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
    return ""


def _bare_name(path: Path) -> str | None:
    """The config name ``path`` spells when it has no folder part (``compare``, ``compare.yaml``), else None."""
    if path.parent != Path(".") or path.name in ("", ".", ".."):
        return None
    return path.stem if path.suffix in SUFFIXES else path.name


def _available() -> str:
    return ", ".join(packaged_configs()) or "(none: the package has no configs/ folder)"


def packaged_config(name: str) -> Path:
    """The packaged config called ``name`` (``compare`` or ``compare.yaml``); bad input lists the names."""
    key = _bare_name(Path(name))
    found = packaged_configs().get(key) if key is not None else None
    if found is None:
        raise ConfigFileError(f"no packaged config named {name!r}; packaged configs: {_available()}")
    return found


@dataclass(frozen=True)
class ConfigSource:
    """Which file a CONFIG argument resolved to. ``packaged``: no such file here, so the packaged config of
    that name; ``shadows``: the name of a packaged config that a file in the working folder hides."""

    given: Path
    path: Path
    packaged: bool = False
    shadows: str | None = None

    @property
    def note(self) -> str | None:
        """A line for the user when the bare name could mean two files, saying which one is used."""
        if self.packaged:
            return (
                f"config: the packaged {self.path.name} ({self.path}), as there is no file {self.given} here; "
                f"`fedmia init {self.path.stem}` copies it out for editing"
            )
        if self.shadows is not None:
            return f"config: {self.path} from this folder (not the packaged {self.shadows}.yaml)"
        return None


def resolve_config(path: str | Path) -> ConfigSource:
    """The file CONFIG names: an existing path wins; else a bare name is the packaged config of that name.

    Raises ``ConfigFileError`` (exit 2) for a missing path or an unknown name, listing the packaged configs.
    """
    given = Path(path)
    name = _bare_name(given)
    packaged = packaged_configs()
    if given.is_file():
        return ConfigSource(given, given, shadows=name if name in packaged else None)
    if name is not None and name in packaged:
        return ConfigSource(given, packaged[name], packaged=True)
    if name is not None:
        raise ConfigFileError(
            f"config file not found: {given} (no such file here, and no packaged config named {name!r}); "
            f"packaged configs: {_available()} (`fedmia configs` describes them)"
        )
    raise ConfigFileError(
        f"config file not found: {given}; a packaged config is named without a folder, e.g. "
        f"`fedmia run compare`: {_available()}"
    )


def copy_out(name: str, directory: Path) -> Path:
    """Copy the packaged config ``name`` to ``directory/<name>.yaml`` (the folder is made if missing).

    Never overwrites: an existing file there is bad input (``ConfigFileError``), as is a folder that cannot
    be written."""
    source = packaged_config(name)
    target = directory / source.name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigFileError(f"cannot make the folder {directory}: {exc.strerror or exc}") from None
    try:
        with source.open("rb") as src, target.open("xb") as dst:  # "x": fails if the file exists
            shutil.copyfileobj(src, dst)
    except FileExistsError:
        raise ConfigFileError(
            f"{target} already exists; fedmia init does not overwrite it (remove it first, or give another DIR)"
        ) from None
    except OSError as exc:
        raise ConfigFileError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
