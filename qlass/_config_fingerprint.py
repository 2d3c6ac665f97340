"""What a config section contributes to a stage's fingerprint (see ``RunConfig.section_fingerprint``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ADDED_LATER", "fingerprint_data"]

ADDED_LATER: dict[str, Any] = {"fingerprint": "when_set"}
"""``json_schema_extra`` of a field added after stores with finished stages exist.

A stage is skipped when the fingerprint of the sections it depends on matches the stored
one, so a new field would change every fingerprint and make every store redo its stages
after an upgrade. A field marked with this (whose default must reproduce the behaviour from
before it existed) takes part in the fingerprint only when set to something else."""


def fingerprint_data(section: BaseModel) -> dict[str, Any]:
    """``section`` as JSON data, without the :data:`ADDED_LATER` fields left at default."""
    data: dict[str, Any] = section.model_dump(mode="json")
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if field.json_schema_extra == ADDED_LATER and value == field.get_default(
            call_default_factory=True
        ):
            del data[name]
        elif isinstance(value, BaseModel):
            data[name] = fingerprint_data(value)
    return data
