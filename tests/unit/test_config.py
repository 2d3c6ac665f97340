from pathlib import Path

import pytest

from qlass.config import RunConfig, apply_overrides, load_config
from qlass.errors import ConfigError


def test_defaults_are_the_papers_settings() -> None:
    config = RunConfig()
    assert (config.explore.width, config.explore.min_prune_depth) == (2, 3)
    assert config.labels.gamma == 0.9
    assert config.labels.max_triples_per_tree == 300
    assert (config.qnet.batch_size, config.qnet.epochs, config.qnet.lr) == (64, 3.0, 1e-5)
    assert config.search.oracle_terminal_reward is False


def test_toml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('name = "t"\n[explore]\nwidth = 3\n[labels]\ngamma = 0.5\n')
    config = load_config(path, ["labels.gamma=0.8", "env.games=[coin, sorting]"])
    assert config.name == "t"
    assert config.explore.width == 3
    assert config.labels.gamma == 0.8
    assert config.env.games == ("coin", "sorting")


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 7\npolicy:\n  backend: litellm\n  model: openai/gpt-4o\n")
    config = load_config(path)
    assert (config.seed, config.policy.backend, config.policy.model) == (
        7,
        "litellm",
        "openai/gpt-4o",
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["explore.width=0"], "explore.width"),
        (["labels.gamma=1.5"], "labels.gamma"),
        (["explore.no_such_field=1"], "explore.no_such_field"),
        (["nosection.x=1"], "nosection"),
    ],
)
def test_invalid_values_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[explore\nwidth = ")
    with pytest.raises(ConfigError, match="not valid toml"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_override_syntax_error() -> None:
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        apply_overrides({}, ["explore.width"])


def test_fingerprint_changes_with_config() -> None:
    assert RunConfig().fingerprint() == RunConfig().fingerprint()
    assert RunConfig().fingerprint() != load_config(None, ["labels.gamma=0.5"]).fingerprint()
