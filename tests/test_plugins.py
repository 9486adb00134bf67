"""Plugins without editing fedmia: every registry takes an import path ``package.module:factory`` and
installed entry points, with typed parameters read from the factory's signature exactly as for built-in
entries, and every way a plugin can be wrong is an ``InputError`` (exit 2) naming it."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fedmia.registry
from fedmia.errors import InputError
from fedmia.registry import ParamsError, PluginError, Registry, UnknownNameError

PLUGIN = '''
from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field
from torch import nn


def scale(factor: float = 1.0, shift: int = 0) -> tuple[float, int]:
    """Toy factory: returns its parameters."""
    return factor, shift


class Widget:
    """Toy class: its __init__'s annotations are its parameters."""

    fedmia_traits = "widget-traits"

    def __init__(self, size: Annotated[int, Field(ge=1)] = 2) -> None:
        self.size = size


def net(input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> nn.Module:
    """A one-hidden-layer toy network."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Linear(width, num_classes))


def unannotated(factor=1.0, shift: int = 0):
    return factor, shift


def dangling(n: NoSuchType = 1) -> int:
    return n


NOT_CALLABLE = 3


def not_a_model(input_shape: tuple[int, ...], num_classes: int) -> int:
    return 0


def float64_data(n: int = 4):
    import numpy as np

    from fedmia.data import Dataset

    return Dataset("f64", np.zeros((n, 2)), np.zeros(n, dtype=np.int64), 2)


def good_data(n: int = 4):
    import numpy as np

    from fedmia.data import Dataset

    return Dataset("good", np.zeros((n, 2), dtype=np.float32), np.arange(n, dtype=np.int64) % 2, 2)
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module written under tmp_path and importable as ``fedmia_test_plugin`` (a package, with a submodule)."""
    pkg = tmp_path / "fedmia_test_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "sub.py").write_text("from fedmia_test_plugin import scale as renamed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fedmia_test_plugin"
    for name in [m for m in sys.modules if m.startswith("fedmia_test_plugin")]:
        del sys.modules[name]


def toy_registry() -> Registry[Any]:
    reg: Registry[Any] = Registry("toy")

    @reg.register("builtin")
    def builtin(n: int = 1) -> int:
        return n

    return reg


def test_an_import_path_is_an_entry_with_the_factorys_typed_parameters(plugin_module: str) -> None:
    reg = toy_registry()
    name = f"{plugin_module}:scale"
    assert name in reg
    assert reg.create(name, factor=2.5, shift=3) == (2.5, 3)
    assert reg.create(name) == (1.0, 0)
    assert [(p.name, p.annotation, p.default) for p in reg.params(name)] == [
        ("factor", "float", 1.0),
        ("shift", "int", 0),
    ]
    assert reg.entry(name).origin == "import path"
    assert reg.entry(name).description == "Toy factory: returns its parameters."
    # strict exactly as built-ins: "3" is not 3, a bool is not an int, an unknown name is named
    for params, needle in (({"shift": "3"}, "shift: Input should be a valid integer"), ({"shift": True}, "shift")):
        with pytest.raises(ParamsError, match=needle):
            reg.validate(name, params)
    with pytest.raises(ParamsError, match=r"facto: unknown parameter.*factor \(float, default 1.0\)"):
        reg.validate(name, {"facto": 2.0})
    assert reg.available() == ["builtin"]  # an import path is the config's, not a listed entry


def test_a_class_and_a_dotted_module_path_work_and_traits_come_from_the_factory(plugin_module: str) -> None:
    reg = toy_registry()
    widget = reg.create(f"{plugin_module}:Widget", size=5)
    assert widget.size == 5
    assert reg.traits(f"{plugin_module}:Widget") == "widget-traits"
    with pytest.raises(ParamsError, match="size: Input should be greater than or equal to 1"):
        reg.validate(f"{plugin_module}:Widget", {"size": 0})  # the Annotated range is kept
    assert reg.create(f"{plugin_module}.sub:renamed", shift=1) == (1.0, 1)


def test_an_import_path_model_is_validated_by_the_config_and_built(plugin_module: str) -> None:
    from fedmia.experiment.config import ConfigError, load_config
    from fedmia.models import build_model

    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    cfg = load_config(quickstart, [f"model.name={plugin_module}:net", "model.params={width: 4}"])
    model = build_model(cfg.model.name, (1, 8, 8), 10, seed=0, **cfg.model.params)
    assert [tuple(p.shape) for p in model.parameters()] == [(4, 64), (4,), (10, 4), (10,)]
    with pytest.raises(ConfigError, match=r"model: .*width: Input should be a valid integer"):
        load_config(quickstart, [f"model.name={plugin_module}:net", "model.params={width: '4'}"])
    _forget(plugin_module)


@pytest.mark.parametrize(
    ("path", "error", "needle"),
    [
        ("no_such_module_xyz:f", PluginError, r"no module named 'no_such_module_xyz'.*PYTHONPATH"),
        ("fedmia_test_plugin.nope:f", PluginError, r"no module named 'fedmia_test_plugin.nope'"),
        ("fedmia_test_plugin:missing", PluginError, r"'fedmia_test_plugin' has no 'missing'"),
        ("fedmia_test_plugin:NOT_CALLABLE", PluginError, r"is a int, not a callable factory"),
        ("fedmia_test_plugin:unannotated", PluginError, r"parameter\(s\) factor have no type annotation"),
        ("fedmia_test_plugin:dangling", PluginError, r"'n'.*does not resolve.*NoSuchType"),
        ("fedmia_test_plugin:a:b", PluginError, r"is not an import path; write it as package.module:factory"),
        ("fedmia_test_plugin:", PluginError, r"is not an import path"),
        ("no-such-name", UnknownNameError, r"unknown toy 'no-such-name'; available: builtin \(or an import path"),
    ],
)
def test_a_bad_import_path_is_an_input_error_naming_it(
    plugin_module: str, path: str, error: type[Exception], needle: str
) -> None:
    reg = toy_registry()
    with pytest.raises(error, match=needle) as caught:
        reg.entry(path)
    assert isinstance(caught.value, InputError)
    assert path in str(caught.value)
    if error is PluginError:  # ``in`` (the config's check) raises the same message instead of reading "unknown"
        with pytest.raises(PluginError, match=needle):
            _ = path in reg


def test_a_module_that_fails_its_own_import_is_not_disguised_as_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing dependency inside the plugin's own code is its defect: the real error, with its traceback."""
    (tmp_path / "fedmia_broken_plugin.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        toy_registry().entry("fedmia_broken_plugin:f")
    assert not isinstance(caught.value, InputError)
    sys.modules.pop("fedmia_broken_plugin", None)


def test_a_plugin_that_does_not_take_what_fedmia_passes_is_named(plugin_module: str) -> None:
    reg: Registry[Any] = Registry("model", exclude=("input_shape", "num_classes"))
    with pytest.raises(PluginError, match=r"'fedmia_test_plugin:scale' \(import path\) cannot be called.*input_shape"):
        reg.create(f"{plugin_module}:scale", input_shape=(1,), num_classes=2)


def test_what_a_plugin_builds_is_checked(plugin_module: str) -> None:
    """A model plugin must build an nn.Module, a dataset plugin a Dataset of float32 records and int64 labels."""
    from fedmia.data import load_dataset
    from fedmia.models import build_model

    with pytest.raises(InputError, match=r"model 'fedmia_test_plugin:not_a_model' returned a int, not a torch.nn"):
        build_model(f"{plugin_module}:not_a_model", (2,), 2, seed=0)
    with pytest.raises(InputError, match=r"'fedmia_test_plugin:float64_data': features must be float32.*float64"):
        load_dataset(f"{plugin_module}:float64_data")
    with pytest.raises(InputError, match=r"returned a tuple, not a fedmia.data.Dataset"):
        load_dataset(f"{plugin_module}:scale")
    assert load_dataset(f"{plugin_module}:good_data", n=6).y.tolist() == [0, 1, 0, 1, 0, 1]
    _forget(plugin_module)


def _forget(module: str) -> None:
    """Drop the global registries' entries resolved from ``module`` (the tmp module goes away after the test)."""
    from fedmia.data import DATASETS
    from fedmia.models import MODELS

    for reg in (MODELS, DATASETS):
        reg.reload_plugins()


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: dict[str, list[EntryPoint]]) -> list[str]:
    """Replace importlib.metadata's lookup with ``eps`` (group -> entry points); returns the groups asked."""
    asked: list[str] = []

    def lookup(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        return eps.get(group, [])

    monkeypatch.setattr(fedmia.registry, "entry_points", lookup)
    return asked


def test_entry_points_are_read_once_and_loaded_only_when_used(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = {
        "fedmia.toys": [
            EntryPoint("scaled", f"{plugin_module}:scale", "fedmia.toys"),
            EntryPoint("broken", "no_such_module_xyz:f", "fedmia.toys"),
        ]
    }
    asked = fake_entry_points(monkeypatch, eps)
    reg = toy_registry()
    assert reg.group == "fedmia.toys"
    assert reg.available() == ["broken", "builtin", "scaled"]
    assert reg.plugins() == ["broken", "scaled"]  # listed without importing anything: "broken" is not an error yet
    assert reg.create("scaled", shift=4) == (1.0, 4)
    with pytest.raises(ParamsError, match="shift: Input should be a valid integer"):
        reg.validate("scaled", {"shift": 1.5})
    assert reg.entry("scaled").origin.startswith("entry point fedmia.toys")
    assert "fedmia_test_plugin:scale" in reg.entry("scaled").origin
    with pytest.raises(PluginError, match=r"'broken': entry point 'no_such_module_xyz:f'.*does not load"):
        reg.entry("broken")
    assert asked == ["fedmia.toys"]  # read once however many lookups


def test_an_entry_point_named_like_a_built_in_is_an_input_error(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points(monkeypatch, {"fedmia.toys": [EntryPoint("builtin", f"{plugin_module}:scale", "fedmia.toys")]})
    with pytest.raises(PluginError, match=r"toy 'builtin': entry point 'fedmia_test_plugin:scale'.*name of a built-in"):
        toy_registry().available()


def test_two_plugins_with_one_name_are_an_input_error(plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    twice = [
        EntryPoint("same", f"{plugin_module}:scale", "fedmia.toys"),
        EntryPoint("same", f"{plugin_module}:Widget", "fedmia.toys"),
    ]
    fake_entry_points(monkeypatch, {"fedmia.toys": twice})
    with pytest.raises(PluginError, match=r"'same' is registered twice through entry points.*scale.*Widget"):
        toy_registry().entry("same")


def test_a_built_in_registered_after_a_plugin_took_its_name_is_an_input_error(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points(monkeypatch, {"fedmia.toys": [EntryPoint("later", f"{plugin_module}:scale", "fedmia.toys")]})
    reg = toy_registry()
    reg.plugins()
    with pytest.raises(PluginError, match="'later'.*name of a built-in"):
        reg.register("later")(lambda: None)


def test_fedmia_list_plugins_shows_entry_points_with_where_they_come_from(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmia.experiment.cli import app
    from fedmia.models import MODELS

    fake_entry_points(monkeypatch, {"fedmia.models": [EntryPoint("toy-net", f"{plugin_module}:net", "fedmia.models")]})
    MODELS.reload_plugins()
    try:
        result = CliRunner().invoke(app, ["list", "--plugins"], terminal_width=250)
        assert result.exit_code == 0, result.output
        assert "toy-net" in result.output and "width: int = 8" in result.output
        assert "entry point fedmia.models" in result.output and "A one-hidden-layer toy network" in result.output
        assert "mlp" not in result.output  # built-ins are not plugins
        result = CliRunner().invoke(app, ["list"], terminal_width=250)
        assert "toy-net" in result.output and "mlp" in result.output  # plain list shows both

        fake_entry_points(monkeypatch, {"fedmia.models": [EntryPoint("mlp", f"{plugin_module}:net", "fedmia.models")]})
        MODELS.reload_plugins()
        result = CliRunner().invoke(app, ["list", "--plugins"], terminal_width=250)
        assert result.exit_code == 2
        assert "model 'mlp': entry point 'fedmia_test_plugin:net'" in " ".join(result.output.split())
    finally:
        monkeypatch.undo()
        MODELS.reload_plugins()


def test_fedmia_list_plugins_with_none_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmia.experiment.cli import app

    fake_entry_points(monkeypatch, {})
    regs = _all_registries()
    for reg in regs:
        reg.reload_plugins()
    try:
        result = CliRunner().invoke(app, ["list", "--plugins"], terminal_width=250)
        assert result.exit_code == 0 and "no plugins installed" in result.output
    finally:
        monkeypatch.undo()
        for reg in regs:
            reg.reload_plugins()


def _all_registries() -> list[Registry[Any]]:
    from fedmia.attacks import ATTACKS, GENERATIVE_ATTACKS
    from fedmia.data import DATASETS
    from fedmia.data.partition import PARTITIONERS
    from fedmia.experiment.settings import SETTINGS
    from fedmia.fl.strategy import CLIPPING, STRATEGIES
    from fedmia.models import MODELS
    from fedmia.training.defenses import DEFENSES
    from fedmia.training.optim import OPTIMIZERS

    return [SETTINGS, DATASETS, MODELS, OPTIMIZERS, ATTACKS, GENERATIVE_ATTACKS, STRATEGIES, PARTITIONERS, CLIPPING] + [
        DEFENSES
    ]


def test_a_training_function_entry_point_is_listed_with_its_group(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmia.experiment.cli import app
    from fedmia.training.user import TRAINING_FUNCTIONS

    ep = EntryPoint("my-fit", f"{plugin_module}:scale", "fedmia.training_functions")
    fake_entry_points(monkeypatch, {"fedmia.training_functions": [ep]})
    TRAINING_FUNCTIONS.reload_plugins()
    try:
        result = CliRunner().invoke(app, ["list", "--plugins"], terminal_width=250)
        assert result.exit_code == 0, result.output
        assert "training functions" in result.output and "my-fit" in result.output
        assert "entry point fedmia.training_functions" in result.output
    finally:
        monkeypatch.undo()
        TRAINING_FUNCTIONS.reload_plugins()
