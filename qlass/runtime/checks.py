"""Up-front checks of a run configuration: names that pydantic cannot know.

:func:`check_config` runs when a pipeline starts, before the store is opened or any work
is done, so that a typo in an env, game, backend, strategy or value-model name fails at
once with a message that names the field (``env.games: unknown TextWorldExpress game
'coinn'; choose one of: ...``, ``env.params: TextWorldExpress parameter numLocations must
be a whole number, got 'abc'``), rather than after the store was created or deep inside a
stage. Values pydantic validates (ranges, literals) are checked when the config loads.
"""

from __future__ import annotations

from typing import Any

from qlass.backends.registry import BACKENDS
from qlass.config import EnvConfig, RunConfig
from qlass.envs.registry import check_params, get_family, list_tasks
from qlass.errors import ConfigError, QlassError, UnknownNameError
from qlass.qnet.registry import VALUE_MODELS
from qlass.runtime.strategies import make_strategy

__all__ = ["check_config", "env_options"]


def check_config(config: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the field of the first unknown name in ``config``.

    Blocking (imports the env family, may read its split files): call it from a thread in
    async code.
    """
    env = config.env
    try:
        get_family(env.name)
    except UnknownNameError as exc:
        raise ConfigError(f"env.name: {exc}") from exc
    _, listing = env_options(env)  # refuses data_dir / server_url the family does not read
    if env.games:
        try:
            list_tasks(env.name, "train", games=list(env.games), params=None, limit=1, **listing)
        except UnknownNameError as exc:
            raise ConfigError(f"env.games: {exc}") from exc
        except QlassError:
            pass  # missing local data and the like: reported by the stage that needs it
    try:
        check_params(env.name, env.params, list(env.games) if env.games else None)
    except ConfigError as exc:
        raise ConfigError(f"env.params: {exc}") from exc
    for field, registry, name in (
        ("policy.backend", BACKENDS, config.policy.backend),
        ("search.value_model", VALUE_MODELS, config.search.value_model),
    ):
        try:
            registry.canonical(name)
        except UnknownNameError as exc:
            raise ConfigError(f"{field}: {exc}") from exc
    for field, specs in (
        ("search.strategies", config.search.strategies),
        ("self_train.strategy", (config.self_train.strategy,)),
    ):
        for spec in specs:
            try:
                make_strategy(spec)
            except UnknownNameError as exc:
                raise ConfigError(f"{field}: {exc}") from exc


def env_options(env: EnvConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options ``env.data_dir`` and ``env.server_url`` give the env family: for
    creating an env, and for listing its tasks (ALFWorld's game files, WebShop's server).
    :class:`ConfigError` naming the field for one the family does not read."""
    return get_family(env.name).config_options(data_dir=env.data_dir, server_url=env.server_url)
