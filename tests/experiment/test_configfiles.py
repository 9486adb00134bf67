"""Packaged configs (issue 28): a bare name resolves to fedmia/configs/<name>.yaml when no such file is in the
working folder, an existing path always wins, anything else exits 2 listing the names; `fedmia configs`,
`fedmia init` and `fedmia --version`. No run trains anything here (each CLI case stops at validation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedmia
from fedmia.experiment.cli import app
from fedmia.experiment.config import ConfigError, load_config, read_tree
from fedmia.experiment.configfiles import (
    PACKAGED,
    ConfigFileError,
    copy_out,
    first_comment,
    packaged_config,
    packaged_configs,
    resolve_config,
)

REPO = Path(__file__).resolve().parents[2]
NAMES = sorted(p.stem for p in (REPO / "fedmia" / "configs").glob("*.yaml"))


def cli(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_packaged_configs_are_the_files_in_fedmia_configs_and_the_root_folder_links_to_them() -> None:
    assert NAMES and "compare" in NAMES and "quickstart" in NAMES
    assert list(packaged_configs()) == NAMES
    assert PACKAGED.resolve() == (REPO / "fedmia" / "configs").resolve()
    root = REPO / "configs"  # the checkout's configs/ (tests, notebooks, docs) is a relative symlink to them
    assert root.is_symlink() and root.readlink() == Path("fedmia/configs")


@pytest.mark.parametrize("spelled", ["compare", "compare.yaml"])
def test_a_bare_name_with_no_such_file_here_is_the_packaged_config(
    spelled: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty folder
    source = resolve_config(spelled)
    assert source.path == PACKAGED / "compare.yaml" and source.packaged
    assert "packaged compare.yaml" in (source.note or "") and "fedmia init compare" in (source.note or "")
    assert read_tree(spelled) == read_tree(REPO / "fedmia" / "configs" / "compare.yaml")
    assert load_config(spelled) == load_config(REPO / "configs" / "compare.yaml")


def test_a_file_in_the_working_folder_wins_over_the_packaged_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("compare.yaml").write_text("name: mine\n")
    source = resolve_config("compare.yaml")
    assert source.path == Path("compare.yaml") and not source.packaged and source.shadows == "compare"
    assert "from this folder" in (source.note or "")
    assert load_config("compare.yaml").name == "mine"
    # `compare` (no suffix) names no file here: still the packaged one, and the note says so
    assert resolve_config("compare").packaged and load_config("compare").name == "compare"
    # a path with a folder is never looked up among the packaged configs
    Path("sub").mkdir()
    with pytest.raises(ConfigFileError, match="not found: sub/compare.yaml"):
        resolve_config("sub/compare.yaml")
    assert resolve_config(tmp_path / "compare.yaml").note is None  # an explicit path: nothing to say


def test_unknown_names_and_missing_paths_are_config_errors_listing_the_packaged_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for given in ("nope", "nope.yaml", "configs/compare.yaml", str(tmp_path / "absent.yaml")):
        with pytest.raises(ConfigError, match="not found") as exc:
            load_config(given)
        assert all(name in str(exc.value) for name in NAMES), str(exc.value)
    with pytest.raises(ConfigFileError, match="no packaged config named 'nope'"):
        packaged_config("nope")
    assert packaged_config("quickstart.yaml") == PACKAGED / "quickstart.yaml"


def test_first_comment_is_the_first_comment_line() -> None:
    assert first_comment(PACKAGED / "compare.yaml") == (
        "The headline comparison: the same data, model and training budget (40 epochs) trained centrally"
    )


def test_first_comment_on_hand_written_files(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n  #   indented, after a key  \n# second\n")
    assert first_comment(p) == "indented, after a key"
    p.write_text("name: x\nseed: 1\n")
    assert first_comment(p) == ""


@pytest.mark.parametrize("command", [["run"], ["sweep"], ["audit-dp"]])
def test_every_command_that_takes_a_config_resolves_bare_names(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an empty folder, a bare name reaches the packaged file (stderr says so; the run then stops at
    validation: train.epochs=0), and an unknown name exits 2 listing the names. Nothing is written."""
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "quickstart", "train.epochs=0", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "the packaged quickstart.yaml" in result.output and "train.epochs" in result.output
    result = cli(*command, "nope", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "no packaged config named 'nope'" in result.output and "quickstart" in result.output
    assert list(tmp_path.iterdir()) == []


def test_fedmia_configs_lists_every_packaged_config_with_its_first_comment_line() -> None:
    result = CliRunner().invoke(app, ["configs"], terminal_width=250)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in NAMES:
        row = next((line for line in lines if f" {name} " in line), None)
        assert row is not None, f"{name} not listed:\n{result.output}"
        assert first_comment(PACKAGED / f"{name}.yaml")[:40] in row


def test_fedmia_init_copies_a_packaged_config_and_never_overwrites(tmp_path: Path) -> None:
    result = cli("init", "quickstart", tmp_path / "mine")
    assert result.exit_code == 0, result.output
    copied = tmp_path / "mine" / "quickstart.yaml"
    assert copied.read_bytes() == (PACKAGED / "quickstart.yaml").read_bytes()
    copied.write_text("name: edited\n")
    result = cli("init", "quickstart", tmp_path / "mine")
    assert result.exit_code == 2 and "already exists" in result.output
    assert copied.read_text() == "name: edited\n"  # the user's edit survives
    result = cli("init", "nope", tmp_path)
    assert result.exit_code == 2 and all(name in result.output for name in NAMES), result.output
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigFileError, match="cannot make the folder"):
        copy_out("quickstart", tmp_path / "afile")


def test_fedmia_init_into_the_working_folder_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init", "federated.yaml").exit_code == 0
    assert Path("federated.yaml").read_bytes() == (PACKAGED / "federated.yaml").read_bytes()


def test_version_option_prints_the_package_version() -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.output == f"fedmia {fedmia.__version__}\n"
