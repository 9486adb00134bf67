"""The typed config: YAML + key=value overrides, validated once; every error names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmia.experiment.config import ConfigError, ExperimentConfig, dump_config, load_config, parse_overrides
from fedmia.training import DPSpec, Recipe

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def test_quickstart_loads_as_written() -> None:
    cfg = load_config(QUICKSTART)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "quickstart" and cfg.data.dataset == "digits" and cfg.model.name == "mlp"
    assert cfg.train.epochs == 40 and cfg.train.batch_size == 32 and cfg.train.lr == 0.05
    assert cfg.audit.references == 16
    assert [a.name for a in cfg.audit.attacks][:2] == ["loss", "confidence"]
    rmia = next(a for a in cfg.audit.attacks if a.name == "rmia")
    assert rmia.params == {"a": "auto", "gamma": 1.0}
    assert cfg.model.params["hidden"] == [256]


def test_no_file_gives_defaults() -> None:
    assert load_config(None) == ExperimentConfig()


def test_overrides_are_yaml_typed_and_dotted() -> None:
    cfg = load_config(
        QUICKSTART,
        [
            "train.epochs=5",
            "train.lr=1e-3",
            "train.optimizer=adam",
            "data.split.test=0.05",
            "audit.references=4",
            "audit.attacks=[loss, {name: rmia, params: {a: 0.5}}]",
            "model.params={hidden: [8, 4]}",
            "settings=[centralized, federated]",
            "name=short-run",
        ],
    )
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.optimizer == "adam"
    assert cfg.data.split.test == 0.05 and cfg.data.split.members == 0.3  # siblings kept
    assert cfg.audit.references == 4
    assert [(a.name, a.params) for a in cfg.audit.attacks] == [("loss", {}), ("rmia", {"a": 0.5})]
    assert cfg.model.params == {"hidden": [8, 4]}
    assert cfg.settings == ("centralized", "federated")
    assert cfg.name == "short-run"
    assert cfg.train.batch_size == 32  # untouched fields keep the file's values


def test_later_override_wins_and_creates_missing_sections() -> None:
    cfg = load_config(QUICKSTART, ["train.epochs=5", "train.epochs=7", "train.dp.noise_multiplier=1.1"])
    assert cfg.train.epochs == 7
    assert cfg.train.dp is not None and cfg.train.dp.noise_multiplier == 1.1
    assert cfg.train.dp.target_epsilon is None


def test_parse_overrides_types() -> None:
    assert parse_overrides(["a.b=3", "c=true", "d=null", "e=x y", "f=", "g=[1, 2]", "h='7'"]) == [
        ("a.b", 3),
        ("c", True),
        ("d", None),
        ("e", "x y"),
        ("f", ""),
        ("g", [1, 2]),
        ("h", "7"),
    ]


def test_config_is_frozen() -> None:
    cfg = load_config(QUICKSTART)
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen-instance error)
        cfg.train.epochs = 3  # type: ignore[misc]


def test_recipe_and_dp_spec_from_config() -> None:
    cfg = load_config(QUICKSTART, ["train.dp={target_epsilon: 4.0, max_grad_norm: 2.0}", "train.weight_decay=0.01"])
    recipe = cfg.train.recipe()
    assert recipe == Recipe(
        epochs=40,
        batch_size=32,
        lr=0.05,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.01,
        dp=DPSpec(target_epsilon=4.0, max_grad_norm=2.0),
    )
    assert cfg.train.recipe(proximal_mu=0.1).proximal_mu == 0.1


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        QUICKSTART, ["train.dp.noise_multiplier=0.8", "audit.attacks=[loss, {name: rmia, params: {a: 0.2}}]"]
    )
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


# ---- every error names the field path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "why"),
    [
        (["train.epoch=5"], "train.epoch", "unknown field"),
        (["bogus=1"], "bogus", "unknown field"),
        (["data.split.holdout=0.1"], "data.split.holdout", "unknown field"),
        (["train.epochs=five"], "train.epochs", "integer"),
        (["train.epochs=2.5"], "train.epochs", "integer"),
        (["train.lr=fast"], "train.lr", "number"),
        (["train.dp=3"], "train.dp", "dictionary"),
        (["audit.attacks=loss"], "audit.attacks", "tuple"),
        (["train.epochs=0"], "train.epochs", "greater than or equal to 1"),
        (["train.lr=-0.1"], "train.lr", "greater than 0"),
        (["train.momentum=1.5"], "train.momentum", "less than 1"),
        (["audit.references=-1"], "audit.references", "greater than or equal to 0"),
        (["audit.references=5000"], "audit.references", "less than or equal to 1024"),
        (["seed=-1"], "seed", "greater than or equal to 0"),
        (["data.split.members=0.6", "data.split.nonmembers=0.6"], "data.split", "at most 1"),
        (["train.dp={noise_multiplier: 1, delta: 2}"], "train.dp.delta", "less than 1"),
        (["train.dp.noise_multiplier=1", "train.dp.target_epsilon=3"], "train.dp", "exactly one"),
        (  # the accountant's epsilon assumes Poisson sampling (Chua et al. 2024): refused, not misreported
            ["train.dp={noise_multiplier: 1, poisson_sampling: false}"],
            "train.dp",
            "shuffled DP-SGD can be materially less private",
        ),
        (
            ["settings=[federated]", "federation.local_dp={noise_multiplier: 1, poisson_sampling: false}"],
            "federation.local_dp",
            "the reported epsilon would not hold",
        ),
        (["train.optimizer=rmsprop"], "train.optimizer", "unknown optimizer 'rmsprop'; available: adam, sgd"),
        (
            ["settings=[centralized, decentralized]"],
            "settings",
            "unknown setting 'decentralized'; available: centralized",
        ),
        (["settings=[centralized, centralized]"], "settings", "lists centralized twice"),
        (["name=has space"], "name", "pattern"),
        (["audit.attacks=[loss, nosuch]"], "audit.attacks.1.name", "unknown attack 'nosuch'"),
        (["audit.attacks=[{name: bogus}]"], "audit.attacks.0.name", "unknown attack 'bogus'"),
        (["audit.attacks=[loss, loss]"], "audit", "attacks lists loss twice"),
        (
            [
                "federation.strategy={name: fedprox, params: {proximal_mu: 0.1}}",
                "federation.local_dp={noise_multiplier: 1.0}",
            ],
            "federation",
            "proximal_mu=0.1 has no effect under local_dp",
        ),
        (["data.dataset=nope"], "data.dataset", "unknown dataset 'nope'"),
        (["model.name=resnet9000"], "model.name", "unknown model 'resnet9000'"),
    ],
)
def test_invalid_values_name_the_field(overrides: list[str], field: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(QUICKSTART, overrides)
    msg = str(exc.value)
    assert f"{field}:" in msg, msg
    assert why in msg, msg


def test_unknown_names_list_what_is_available() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(QUICKSTART, ["data.dataset=nope", "model.name=nope", "audit.attacks=[nope]"])
    msg = str(exc.value)
    assert "digits" in msg and "purchase-like" in msg  # datasets
    assert "mlp" in msg and "cnn" in msg  # models
    assert "lira-online" in msg and "rmia" in msg  # attacks
    # all three problems reported at once
    assert "data.dataset:" in msg and "model.name:" in msg and "audit.attacks.0.name:" in msg


def test_boolean_for_an_integer_field_is_rejected() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(QUICKSTART, ["train.epochs=true"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["epochs"], "'epochs'"),
        (["=3"], "'=3'"),
        (["train..epochs=3"], "train..epochs"),
        (["train.lr=[1"], "train.lr"),
        (["train.epochs.x=1"], "train.epochs.x"),  # epochs is a value, not a section
    ],
)
def test_malformed_overrides_name_the_override(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(QUICKSTART, overrides)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train: {epochs: 3\n", "not valid YAML"),  # unclosed flow mapping
        ("- loss\n- rmia\n", "mapping"),
        ("just a sentence\n", "mapping"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as exc:
        load_config(p)
    assert "bad.yaml" in str(exc.value)


def test_binary_and_missing_files(tmp_path: Path) -> None:
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="blob.yaml"):
        load_config(binary)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p, ["seed=3"]) == ExperimentConfig(seed=3)


def test_file_errors_name_the_field_too(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 10\n  batch: 32\naudit:\n  references: many\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "train.batch:" in msg and "unknown field" in msg
    assert "audit.references:" in msg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["audit.targets=5", "audit.references=4"], "needs at least 5 references"),
        (["audit.targets=2", "audit.reference_design=shadow"], "needs audit.reference_design: paired"),
        (["audit.targets=0"], "audit.targets"),
    ],
)
def test_many_targets_need_paired_references_enough_for_them(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)
    assert load_config(None, ["audit.targets=4", "audit.references=4"]).audit.targets == 4
    # the generative settings train their further targets: no outsider references to promote
    generative = ["settings=[generative-centralized]", "model.name=vae", "model.params={}", "audit.references=0"]
    assert load_config(None, [*generative, "audit.targets=3"]).audit.targets == 3
