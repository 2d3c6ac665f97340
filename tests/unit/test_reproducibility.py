"""The reproducibility record of a stage and the trainers' deterministic torch settings."""

from __future__ import annotations

import json

import torch

from qlass._reproducibility import PACKAGES, reproducibility_record
from qlass._training import reproducible_training


def test_record_names_versions_machine_and_torch_threads() -> None:
    record = reproducibility_record()
    json.dumps(record)  # stored as stage metrics: JSON only
    assert set(record["packages"]) == set(PACKAGES)
    assert record["packages"]["torch"] == torch.__version__
    assert record["torch"]["threads"] == torch.get_num_threads()
    assert record["cpus"] and record["python"]


def test_training_is_seeded_and_deterministic_and_the_flags_come_back() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    draws = []
    for _ in range(2):
        with reproducible_training(11) as settings:
            assert torch.are_deterministic_algorithms_enabled()
            assert settings["deterministic_algorithms"] is True
            assert settings["threads"] == torch.get_num_threads()
            draws.append(torch.rand(3))
        assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.equal(draws[0], draws[1])
