import hashlib
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from qlass.config import ADDED_LATER, RunConfig, apply_overrides, env_overrides, load_config
from qlass.errors import ConfigError
from qlass.runtime.stages import DEPENDS


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


# The stage fingerprints of the default config. A store keeps a finished stage only while
# its fingerprint matches, so a change here makes every user's store redo that stage after
# an upgrade. A new field whose default keeps the old behaviour belongs under ADDED_LATER
# (then these stay); change them only for a change that must redo stages.
DEFAULT_STAGE_FINGERPRINTS = {
    "gold": "85601e89204d25d5",
    "bc": "9c66b2c5ab1cfbba",
    "explore": "49e560eaa3cd6ec1",
    "label": "397afb5be32e1515",
    "train_qnet": "bdde7dc0d8f842df",
    "eval": "d960bc667ddc8616",
    "self_train": "d4a0a2401bdce8fd",
}


def test_an_upgrade_keeps_the_stage_fingerprints_of_stored_runs() -> None:
    config = RunConfig()
    fingerprints = {stage: config.section_fingerprint(*DEPENDS[stage]) for stage in DEPENDS}
    assert fingerprints == DEFAULT_STAGE_FINGERPRINTS


def _added_later_fields() -> list[tuple[str, str]]:
    return [
        (section, name)
        for section, section_field in RunConfig.model_fields.items()
        if isinstance(section_field.annotation, type)
        and issubclass(section_field.annotation, BaseModel)
        for name, field in section_field.annotation.model_fields.items()
        if field.json_schema_extra == ADDED_LATER
    ]


def test_a_field_added_later_counts_only_when_set() -> None:
    fields = _added_later_fields()
    assert ("bc", "lora") in fields and ("qnet", "gradient_checkpointing") in fields
    config = RunConfig()
    for section in {section for section, _ in fields}:
        # the fingerprint a store made before the fields existed holds: the dump without them
        data = config.model_dump(mode="json")[section]
        for name in [name for owner, name in fields if owner == section]:
            del data[name]
        before = hashlib.sha256(
            json.dumps({section: data, "seed": config.seed}, sort_keys=True).encode()
        ).hexdigest()[:16]
        assert config.section_fingerprint(section) == before, section
    assert load_config(None, ["bc.lora.rank=8"]).section_fingerprint(
        "bc"
    ) != config.section_fingerprint("bc")
    assert load_config(None, ["qnet.gradient_checkpointing=true"]).section_fingerprint(
        "qnet"
    ) != config.section_fingerprint("qnet")


def test_environment_sits_between_the_file_and_set(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("seed = 1\n[explore]\nwidth = 3\nmax_depth = 5\n")
    environ = {
        "QLASS_EXPLORE__WIDTH": "4",
        "qlass_labels__gamma": "0.5",  # names are case-insensitive
        "QLASS_ENV__GAMES": "[coin, sorting]",  # values are read as --set reads them
        "QLASS_SEED": "7",
        "QLASS_DB": "postgresql+asyncpg://db/qlass",  # not a config field: left alone
        "QLASS_TEST_ARTIFACTS": "/tmp/x",
        "PATH": "/usr/bin",
    }
    from_env = load_config(path, environ=environ)
    assert (from_env.explore.width, from_env.explore.max_depth) == (4, 5)
    assert (from_env.labels.gamma, from_env.seed) == (0.5, 7)
    assert from_env.env.games == ("coin", "sorting")
    assert load_config(path, ["explore.width=6"], environ=environ).explore.width == 6
    assert load_config(path).explore.width == 3  # no environ given: the file's value
    assert [(o.variable, o.field) for o in env_overrides(environ)] == [
        ("QLASS_ENV__GAMES", "env.games"),
        ("QLASS_EXPLORE__WIDTH", "explore.width"),
        ("QLASS_SEED", "seed"),
        ("qlass_labels__gamma", "labels.gamma"),
    ]


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("QLASS_EXPLORE__WIDHT", "QLASS_EXPLORE__WIDHT: explore has no field 'widht'"),
        ("QLASS_NOPE__WIDTH", "QLASS_NOPE__WIDTH: the config has no field 'nope'"),
        ("QLASS_SEED__X", "QLASS_SEED__X: seed is a value, not a section"),
        ("QLASS_EXPLORE", "QLASS_EXPLORE: explore is a section"),
        ("QLASS_EXPLORE__", "QLASS_EXPLORE__: empty name"),
    ],
)
def test_unknown_environment_fields_name_the_variable(variable: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, environ={variable: "3"})


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"explore\.width: .* \(from QLASS_EXPLORE__WIDTH\)"):
        load_config(None, environ={"QLASS_EXPLORE__WIDTH": "0"})


def test_config_show_lists_what_came_from_the_environment(cli: CliRunner) -> None:
    from qlass.cli import app

    env = {"QLASS_EXPLORE__WIDTH": "3", "QLASS_LABELS__GAMMA": "0.5"}
    result = cli.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["explore"]["width"], shown["labels"]["gamma"]) == (3, 0.5)
    assert "from the environment: explore.width (QLASS_EXPLORE__WIDTH)\n" in result.stderr
    assert "from the environment: labels.gamma (QLASS_LABELS__GAMMA)\n" in result.stderr
    result = cli.invoke(app, ["config", "show", "--set", "explore.width=5"], env=env)
    assert json.loads(result.stdout)["explore"]["width"] == 5
    assert "explore.width (QLASS_EXPLORE__WIDTH) (overridden on the command line)" in (
        result.stderr
    )
    result = cli.invoke(app, ["config", "show"], env={"QLASS_EXPLORE__WIDHT": "3"})
    assert isinstance(result.exception, ConfigError)
    assert "QLASS_EXPLORE__WIDHT" in str(result.exception)


def test_an_unknown_variable_is_one_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from qlass.cli import main

    monkeypatch.setenv("QLASS_EXPLORE__WIDHT", "3")
    monkeypatch.setattr(sys, "argv", ["qlass", "config", "show"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: environment variable QLASS_EXPLORE__WIDHT: explore has no")
    assert err.count("\n") == 1 and "Traceback" not in err
