import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from qlass.errors import ValueModelError
from qlass.qnet.base import BaseValueModel, ValueModel, ValueQuery
from qlass.qnet.client import QNetClient
from qlass.qnet.registry import create_value_model
from qlass.qnet.scorer import QNetScorer
from qlass.qnet.server import create_app
from qlass.qnet.wrappers import RetryingValueModel
from tests.qnet.qnet_helpers import free_port, varied_queries


@pytest.fixture(scope="module")
def qnet_server(qnet_dir: Path, serve_app):
    scorer = QNetScorer.from_pretrained(qnet_dir, device="cpu", max_wait_s=0.02)
    with serve_app(create_app(scorer, name="test-qnet")) as url:
        yield url, scorer


async def test_client_and_server_agree_with_in_process_scorer(qnet_dir: Path, qnet_server) -> None:
    url, served = qnet_server
    queries = varied_queries(12)
    async with await QNetScorer.aload(qnet_dir, device="cpu", cache_size=0) as local:
        expected = await local.score(queries)
    async with QNetClient(url, timeout_s=30) as client:
        assert isinstance(client, ValueModel)
        # Four agents ask concurrently, each for its own candidates.
        chunks = [queries[i : i + 3] for i in range(0, 12, 3)]
        got = await asyncio.gather(*(client.score(chunk) for chunk in chunks))
        health = await client.health()
    gc.collect()  # a leaked connection (e.g. one client per concurrent first call) fails here
    assert [s for chunk in got for s in chunk] == pytest.approx(expected, abs=1e-5)
    assert health["status"] == "ok" and health["model"] == "test-qnet"
    assert health["stats"]["queries"] >= 12
    # The server batched the concurrent requests into fewer forward passes than requests.
    assert served._batcher.stats.batches < 4 or served.stats.forward_passes < 12


async def test_client_splits_large_calls(qnet_server) -> None:
    url, _ = qnet_server
    queries = varied_queries(7)
    async with QNetClient(url, max_queries_per_request=3) as client:
        split = await client.score(queries)
    async with QNetClient(url) as client:
        whole = await client.score(queries)
    assert split == pytest.approx(whole, abs=1e-6)
    assert len(split) == 7


async def test_malformed_body_is_422(qnet_server) -> None:
    url, _ = qnet_server
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/score", json={"queries": [{"candidate_text": "x"}]})
    assert response.status_code == 422


async def test_dead_port_raises_value_model_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = create_value_model("qnet-server", url=url, retries=2, backoff_s=0.01)
    assert isinstance(client, RetryingValueModel) and isinstance(client.inner, QNetClient)
    with pytest.raises(ValueModelError, match=r"failed: unreachable .*gave up after 3 attempts"):
        await client.score(varied_queries(1))
    await client.aclose()


class _Slow(BaseValueModel):
    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        await asyncio.sleep(0.8)
        return [0.0] * len(queries)


class _Failing(BaseValueModel):
    def __init__(self) -> None:
        self.calls = 0

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        self.calls += 1
        raise ValueModelError("the GPU fell over")


async def test_slow_server_times_out_clearly(serve_app) -> None:
    with serve_app(create_app(_Slow())) as url:
        client = create_value_model(
            "qnet-server", url=url, timeout_s=0.2, retries=1, backoff_s=0.01
        )
        with pytest.raises(ValueModelError, match=r"timed out after 0\.2 s"):
            await client.score(varied_queries(1))
        await client.aclose()


async def test_server_error_is_retried_then_reported(serve_app) -> None:
    failing = _Failing()
    with serve_app(create_app(failing)) as url:
        client = create_value_model("qnet-server", url=url, retries=2, backoff_s=0.01)
        with pytest.raises(ValueModelError, match=r"server error 500: .*GPU fell over"):
            await client.score(varied_queries(1))
        await client.aclose()
    assert failing.calls == 3


async def test_a_refused_request_is_not_retried(serve_app) -> None:
    failing = _Failing()
    with serve_app(create_app(failing)) as url:
        client = create_value_model(
            "qnet-server", url=url, retries=2, backoff_s=0.01, max_queries_per_request=5000
        )
        with pytest.raises(ValueModelError, match=r"refused the request \(413\)"):
            await client.score([ValueQuery(varied_queries(1)[0].history, "x")] * 5000)
        await client.aclose()
    assert failing.calls == 0
