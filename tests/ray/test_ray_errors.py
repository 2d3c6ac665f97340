"""How the Ray executor reports an actor's failure: a qlass error raised in an actor as
itself (the CLI prints it as on one machine), Ray's own errors as one line. Ray's real
exception classes; ``ray.get`` replaced by one that raises them (no cluster started)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from qlass.errors import PolicyCallError, RuntimeFailure
from qlass.runtime.ray_executor import _results

ray = pytest.importorskip("ray")


def _raising(exc: BaseException) -> Any:
    def get(refs: list[Any]) -> list[dict[str, Any]]:
        raise exc

    return SimpleNamespace(get=get, exceptions=ray.exceptions)


async def test_a_qlass_error_in_an_actor_is_raised_as_itself() -> None:
    cause = PolicyCallError("the policy server answered 500 four times")
    wrapped = ray.exceptions.RayTaskError("explore", "Traceback ...\n", cause)
    with pytest.raises(PolicyCallError, match="answered 500") as info:
        await _results(_raising(wrapped), [])
    assert info.value is cause


async def test_another_error_in_an_actor_is_one_line() -> None:
    wrapped = ray.exceptions.RayTaskError("explore", "Traceback ...\n", KeyError("node 7"))
    with pytest.raises(RuntimeFailure, match=r"^a Ray actor failed: 'node 7'$"):
        await _results(_raising(wrapped), [])


async def test_a_lost_actor_is_one_line_that_says_how_to_continue() -> None:
    lost = ray.exceptions.ActorUnavailableError("The actor is unavailable:\nRpcError ...", None)
    with pytest.raises(RuntimeFailure) as info:
        await _results(_raising(lost), [])
    message = str(info.value)
    assert "\n" not in message and "rerun the command to continue" in message
