"""The config loader, fuzzed: any input gives a config or a ``ConfigError`` with a message, never
another exception; the CLI turns every bad config into exit code 2 and an ``error:`` line, no traceback.

* ``config_from_dict`` on arbitrary YAML-like trees, and on the quickstart config with one leaf
  replaced or one key inserted at a random path (then the message names that path, or a section
  above it whose check the change broke);
* ``parse_overrides`` / ``load_config`` with arbitrary ``key=value`` strings (YAML syntax, tags,
  anchors, unicode, dots and equals signs);
* ``fedmia run`` on files of arbitrary bytes (every case also carries an invalid override, so a file
  that happens to be a valid config is rejected too and no experiment ever runs).
"""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedmia.experiment.cli import app
from fedmia.experiment.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASE: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI_FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)

# ---- strategies ---------------------------------------------------------------------------------------

# names the schema knows, so that trees often reach deep into it rather than stopping at "unknown field"
FIELD_NAMES = sorted(
    {
        *ExperimentConfig.model_fields,
        "dataset", "params", "split", "members", "nonmembers", "population", "test", "epochs", "batch_size",
        "lr", "optimizer", "momentum", "dp", "noise_multiplier", "target_epsilon", "max_grad_norm", "delta",
        "accountant", "references", "attacks", "federated_attacks", "num_clients", "rounds", "fraction",
        "strategy", "partition", "local_dp", "central_dp", "clipping", "clipping_norm", "alpha", "hidden",
    }
)  # fmt: skip
SPECIAL_WORDS = [
    "", "~", "null", "true", "no", "yes", "on", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1e400", "-0",
    "digits", "mlp", "sgd", "rdp", "federated", "centralized", "fedavg", "iid", "server-fixed", "loss",
    "2001-12-14", "12:30:00", "!!binary AAA", "&a [*a]", "{", "[", "]", "}", ":", "- ", "#", "|", ">",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(SPECIAL_WORDS)
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8) | st.integers() | st.booleans() | st.none()
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)
configs = st.dictionaries(st.sampled_from(FIELD_NAMES) | keys, trees, max_size=6)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a YAML tree (dict keys and list indices), the root excluded."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


def containers(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every dict in the tree, the root included."""
    out = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.extend(containers(v, (*prefix, k)))
    return out


BASE_PATHS = paths(BASE)
BASE_DICTS = containers(BASE)


def get(tree: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The quickstart config with one leaf replaced, or one key inserted; returns (tree, path changed)."""
    tree = copy.deepcopy(BASE)
    if draw(st.booleans()):
        path = draw(st.sampled_from(BASE_PATHS))
        get(tree, path[:-1])[path[-1]] = draw(trees)
    else:
        parent = draw(st.sampled_from(BASE_DICTS))
        key = draw(keys)
        path = (*parent, key)
        get(tree, parent)[key] = draw(trees)
    return tree, path


def check(call: Any, *args: Any) -> ExperimentConfig | ConfigError:
    """Run a loader: it must return a config or raise ConfigError with a message, nothing else."""
    try:
        cfg = call(*args)
    except ConfigError as exc:
        assert str(exc).strip(), "empty ConfigError message"
        return exc
    assert isinstance(cfg, ExperimentConfig)
    return cfg


def has_error_lines(message: str) -> bool:
    """A validation message (``_format``): a header, then one ``  loc: msg`` line per error."""
    return message.startswith("invalid config:\n  ")


def names_path(message: str, path: tuple[Any, ...]) -> bool:
    """Some error line is at ``path``, below it, or at a section above it (whose own check failed)."""
    dotted = [".".join(str(p) for p in path[:i]) for i in range(1, len(path) + 1)]
    # substring tests, not line splitting: a key may itself hold a line break
    return f"\n  {dotted[-1]}." in message or any(f"\n  {d}: " in message for d in dotted)


# ---- (a) config_from_dict -----------------------------------------------------------------------------


def test_base_config_is_valid() -> None:
    cfg = config_from_dict(copy.deepcopy(BASE))
    assert cfg == load_config(QUICKSTART)
    assert len(BASE_PATHS) > 20 and len(BASE_DICTS) > 5


@FUZZ
@given(trees)
def test_any_tree_gives_config_or_config_error(tree: Any) -> None:
    check(config_from_dict, tree)


@FUZZ
@given(configs)
def test_any_mapping_gives_config_or_config_error(tree: dict[Any, Any]) -> None:
    out = check(config_from_dict, tree)
    if isinstance(out, ConfigError):
        assert has_error_lines(str(out))


def with_leaf(path: tuple[Any, ...], value: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    tree = copy.deepcopy(BASE)
    get(tree, path[:-1])[path[-1]] = value
    return tree, path


@FUZZ
@given(mutated())
@example(with_leaf(("seed",), -1))
@example(with_leaf(("name",), "has space"))
@example(with_leaf(("train", "epochs"), "five"))
@example(with_leaf(("train", "dp"), {"noise_multiplier": 1.0, "target_epsilon": 3}))
@example(with_leaf(("audit", "attacks", 3), 7))
@example(with_leaf(("audit", "attacks", 3), "loss"))  # listed twice: the audit section's own check
@example(with_leaf(("data", "bogus"), 1))
@example(with_leaf(("data", "split", "members"), 0.9))  # fractions sum above 1: data.split's check
@example(with_leaf(("settings",), ["centralized", "nosuch"]))
@example(with_leaf(("model",), {1: 2}))
def test_mutated_quickstart_names_the_field(case: tuple[dict[str, Any], tuple[Any, ...]]) -> None:
    tree, path = case
    out = check(config_from_dict, tree)
    # Keys the message cannot spell: an empty key has no dotted name (a top-level one is reported as
    # "(top level): unknown field"), and pydantic reports a boolean key (YAML's unquoted on/off/yes/no)
    # as 1 or 0 ("0: Keys should be strings").
    if isinstance(out, ConfigError) and all(str(k) and not isinstance(k, bool) for k in path):
        assert names_path(str(out), path), (path, str(out))


# ---- (b) overrides ------------------------------------------------------------------------------------

KNOWN_KEYS = [".".join(map(str, p)) for p in BASE_PATHS if all(isinstance(k, str) for k in p)]
YAML_CHARS = string.ascii_letters + string.digits + "=.:-_ ,[]{}!&*#|>%@`'\"?~\\\t\n/" + "éß中🙂\u00a0\u2028"
override_text = st.text(alphabet=YAML_CHARS, max_size=30) | st.text(max_size=30)
structured_override = st.builds(
    lambda k, v: f"{k}={v}",
    st.sampled_from(KNOWN_KEYS) | st.sampled_from(FIELD_NAMES) | st.text(alphabet=YAML_CHARS, max_size=12),
    st.sampled_from(SPECIAL_WORDS) | override_text,
)
overrides = st.lists(override_text | structured_override, max_size=4)


@FUZZ
@given(overrides)
def test_parse_overrides_parses_or_raises_config_error(items: list[str]) -> None:
    try:
        parsed = parse_overrides(items)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    assert [k for k, _ in parsed] == [i.partition("=")[0] for i in items]


@FUZZ
@given(overrides)
@example(["model.params.x=&a [*a]"])  # a self-referencing YAML value
@example(["train=&a {dp: *a}"])
@example(["train.epochs.deeper=1"])  # through a leaf
@example(["audit.attacks.0=loss"])  # through a list
@example(["=1", ".=1", "a..b=1", "train.=1"])
@example(["train.epochs=!!python/object/apply:os.system [echo hi]"])  # unsafe tags are refused
def test_load_config_with_any_overrides_gives_config_or_config_error(items: list[str]) -> None:
    check(load_config, QUICKSTART, items)


@FUZZ
@given(st.sampled_from(KNOWN_KEYS), st.sampled_from(SPECIAL_WORDS) | override_text)
def test_override_of_a_known_field_names_it(key: str, value: str) -> None:
    out = check(load_config, QUICKSTART, [f"{key}={value}"])
    if isinstance(out, ConfigError) and str(out).startswith("invalid config:"):
        assert names_path(str(out), tuple(key.split("."))), (key, value, str(out))


def test_no_overrides_from_defaults() -> None:
    assert load_config(None, []) == config_from_dict({})


# ---- (c) the CLI on arbitrary files ----------------------------------------------------------------------

BAD_OVERRIDE = "train.epochs=0"  # rejected whatever the file says, so no case ever runs an experiment


def run_cli(path: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["run", str(path), *args])


def assert_rejected(result: Any, out: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # not an exception that escaped the command
    assert not out.exists()


FILES: dict[str, bytes] = {
    "empty": b"",  # = the defaults, then the override is what is wrong
    "comment-only": b"# nothing here\n",
    "not-utf8": b"name: \xff\xfe\xfa\n",
    "binary-junk": bytes(range(256)) * 4,
    "nul-bytes": b"name: a\x00b\n",
    "yaml-list": b"- loss\n- rmia\n",
    "yaml-scalar": b"42\n",
    "yaml-string": b"just a sentence\n",
    "unclosed-flow": b"train: {epochs: 3\n",
    "tab-indent": b"train:\n\tepochs: 3\n",
    "unsafe-tag": b"name: !!python/object/apply:os.system ['echo pwned']\n",
    "self-reference": b"data: &a {params: *a}\n",
    "utf16-bom": "name: x\n".encode("utf-16"),
    "valid-quickstart": QUICKSTART.read_bytes(),  # valid: rejected for the override only
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_cli_bad_files_exit_2_without_traceback(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(FILES[case])
    out = tmp_path / "run"
    result = run_cli(path, BAD_OVERRIDE, "--out", str(out))
    assert_rejected(result, out)
    flat = "".join(result.output.split())
    assert f"{case}.yaml" in flat or "train.epochs" in flat  # names the file or the field


def test_cli_directory_as_config_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_rejected(run_cli(tmp_path, "--out", str(out)), out)


@CLI_FUZZ
@given(data=st.binary(max_size=300) | st.text(alphabet=YAML_CHARS, max_size=200).map(str.encode))
def test_cli_arbitrary_bytes_exit_2(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    out = tmp_path / "run-fuzz"
    assume(not out.exists())
    assert_rejected(run_cli(path, BAD_OVERRIDE, "--out", str(out)), out)


@CLI_FUZZ
@given(items=overrides)
def test_cli_arbitrary_overrides_exit_2(tmp_path: Path, items: list[str]) -> None:
    # options-looking values would be parsed by click itself (e.g. --help): keep them positional
    items = [i for i in items if not i.startswith("-")]
    out = tmp_path / "run-fuzz"
    assert_rejected(run_cli(QUICKSTART, *items, BAD_OVERRIDE, "--out", str(out)), out)


def test_config_that_validates_can_be_written_and_read_back() -> None:
    """What the CLI writes to config.yaml (and ``--resume`` reads) is the same config."""
    cfg = load_config(QUICKSTART, ["federation.partition={name: dirichlet, params: {alpha: 0.3}}"])
    assert load_config(None, []) != cfg
    tmp = yaml.safe_load(dump_config(cfg))
    assert config_from_dict(tmp) == cfg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.params.foo=1"], "foo"),  # a parameter the model does not take
        (["data.params.path=x.csv"], "path"),  # digits takes no parameters
        (["data.dataset=purchase100", "data.params.path=5"], "path: Input should be a valid string"),  # a number
        (["data.dataset=purchase100", "data.params={path: [a, b]}"], "path: Input should be a valid string"),
        (["model.params.x=&a [*a]"], "x"),  # a self-referencing value
    ],
)
def test_cli_params_a_factory_does_not_take_exit_2(tmp_path: Path, overrides: list[str], needle: str) -> None:
    """``params`` are checked against the entry's declared parameters when the config loads, before
    anything is trained or written: a bad one is an input error (exit 2), not a traceback."""
    out = tmp_path / "run"
    result = run_cli(QUICKSTART, *overrides, "train.epochs=1", "audit.references=0", "--out", str(out))
    assert_rejected(result, out)
    assert needle in result.output
