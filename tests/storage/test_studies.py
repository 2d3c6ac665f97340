"""Studies in the store: create, find, members, updates, and what a failed update says."""

from __future__ import annotations

import pytest

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage import TreeStore

from .conftest import new_run


async def test_studies_record_members_and_updates(store: TreeStore) -> None:
    study = await store.studies.create(
        "s", config={"seed": 0}, config_fingerprint="f", code_version="v", settings={"seeds": [0]}
    )
    assert study.status == "created" and await store.studies.get("s") == study
    with pytest.raises(ConfigError, match="exists already"):
        await store.studies.create(
            "s", config={}, config_fingerprint="f", code_version="v", settings={}
        )
    run, _ = await new_run(store, "s-seed0")
    await store.studies.set_member(study.id, 0, run.id, "eval:dev:abc")
    await store.studies.set_member(study.id, 0, run.id, "eval:dev:def")  # updated, not added
    members = await store.studies.members(study.id)
    assert [(m.seed, m.run_name, m.eval_stage) for m in members] == [(0, "s-seed0", "eval:dev:def")]

    await store.studies.update(study.id, status="stopped")
    await store.studies.update(study.id, status="stopped")  # the same values again: still found
    await store.studies.update(study.id, settings={"seeds": [0, 1]}, summary={"tasks": 3})
    stored = await store.studies.get("s")
    assert stored.status == "stopped" and stored.settings == {"seeds": [0, 1]}
    assert stored.summary == {"tasks": 3} and stored.updated_at >= study.updated_at


async def test_updating_a_missing_study_names_the_store_and_its_studies(store: TreeStore) -> None:
    study = await store.studies.create(
        "present", config={}, config_fingerprint="f", code_version="v", settings={}
    )
    with pytest.raises(UnknownNameError) as caught:
        await store.studies.update(study.id + 1, status="done")
    message = str(caught.value)
    assert f"no study with id {study.id + 1}" in message
    assert store.url in message and "(studies: present)" in message
    assert (await store.studies.get("present")).status == "created"  # nothing changed
