"""An OpenAI-compatible chat server that misbehaves on request, and a QNet scorer double.

:class:`FaultServer` answers ``POST /v1/chat/completions`` over real HTTP (a threaded
``http.server``, so it can also cut connections). Its answers are deterministic per
request seed (choice ``i`` of a call seeded ``s`` is the answer of ``sample_seed(s, i)``,
the rule every qlass backend follows), so a run is reproducible whatever the order of the
requests. Faults are scripted per request seed (``by_seed``: the requests with seed ``s``
get ``by_seed[s]`` one by one, first attempt first, then normal answers), so which request
meets which fault does not depend on timing; ``faults`` is consumed by the other requests
one per request, in arrival order:

- ``"429"``, ``"500"``: that status with an OpenAI-style error body;
- ``"401-echo"``: 401 whose message echoes the API key it was sent (as some providers do);
- ``"timeout"``: no answer until the server shuts down, so the client must hang up itself;
- ``"drop"``: close the connection without answering;
- ``"malformed"``: a 200 whose body is not JSON;
- ``"empty"``: a 200 whose completion is empty;
- ``"long"``: a 200 whose completion is 60,000 characters with no action;
- ``"noaction"``: a 200 whose completion has no ``Action:`` line;
- ``None``: a normal answer.

``down = True`` makes every request a 500 until it is set back (an outage).

:class:`ScorerServer` answers ``POST /v1/score`` like ``qlass serve-qnet``: a score per
query from a hash of its text, or NaN, or slowly, or not at all (``mode``).
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qlass.backends.cache import sample_seed

ACTIONS = ("look around", "move north", "move south", "move east", "move west", "take coin")


def answer(seed: int | None) -> str:
    pick = ACTIONS[(seed or 0) % len(ACTIONS)]
    return f"Thought: I try something.\nAction: {pick}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Base:
    """Runs a handler class on a free loopback port in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._http = _Server(("127.0.0.1", 0), handler)
        self._http.owner = self  # type: ignore[attr-defined]
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> _Base:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class FaultServer(_Base):
    def __init__(
        self,
        faults: list[str | None] | None = None,
        *,
        by_seed: dict[int, list[str | None]] | None = None,
    ) -> None:
        super().__init__(_ChatHandler)
        self.faults: list[str | None] = list(faults or [])
        self.by_seed = {seed: list(script) for seed, script in (by_seed or {}).items()}
        self.down = False
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set on exit: a "timeout" request gives up then
        self.requests = 0
        self.served: list[str] = []  # the fault (or "ok") each request got
        self.served_by_seed: dict[int, list[str]] = {}  # the same, per scripted seed
        self.authorization: set[str] = set()

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        super().__exit__(*exc)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def next_fault(self, seed: int | None) -> str | None:
        with self.lock:
            self.requests += 1
            script = self.by_seed.get(seed) if seed is not None else None
            if self.down:
                fault: str | None = "500"
            elif script is not None:
                fault = script.pop(0) if script else None
            else:
                fault = self.faults.pop(0) if self.faults else None
            self.served.append(fault or "ok")
            if script is not None and seed is not None:
                self.served_by_seed.setdefault(seed, []).append(fault or "ok")
            return fault


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:  # quiet
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")


class _ChatHandler(_Handler):
    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self) -> None:
        server: FaultServer = self.server.owner  # type: ignore[attr-defined]
        body = self._body()
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        server.authorization.add(key)
        seed = body.get("seed")
        fault = server.next_fault(None if seed is None else int(seed))
        if fault in ("429", "500"):
            error = {"message": f"injected {fault}", "type": "server_error", "code": fault}
            self._json(int(fault), {"error": error})  # type: ignore[arg-type]
            return
        if fault == "401-echo":
            message = f"Incorrect API key provided: {key}. You can find your key elsewhere."
            self._json(401, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        if fault == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if fault == "malformed":
            self._send(200, b"{this is not json", "application/json")
            return
        if fault == "timeout":
            server.closing.wait(timeout=600)
            self.close_connection = True
            return
        n = int(body.get("n") or 1)
        texts = [answer(None if seed is None else sample_seed(int(seed), i)) for i in range(n)]
        if fault == "empty":
            texts = [""] * n
        elif fault == "long":
            texts = ["blah " * 12_000] * n
        elif fault == "noaction":
            texts = ["I am not sure what to do here."] * n
        self._json(
            200,
            {
                "id": f"cmpl-{server.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if fault == "long" else "stop",
                    }
                    for i, text in enumerate(texts)
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
            },
        )


class ScorerServer(_Base):
    """``mode``: "ok" (scores in [0, 1]), "nan", or "slow" (answers after ``slow_s``)."""

    def __init__(self, mode: str = "ok", *, slow_s: float = 0.3) -> None:
        super().__init__(_ScoreHandler)
        self.mode = mode
        self.slow_s = slow_s
        self.queries = 0


def _score(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class _ScoreHandler(_Handler):
    def do_GET(self) -> None:
        self._json(200, {"status": "ok"})

    def do_POST(self) -> None:
        server: ScorerServer = self.server.owner  # type: ignore[attr-defined]
        queries = self._body().get("queries", [])
        server.queries += len(queries)
        if server.mode == "slow":
            time.sleep(server.slow_s)
        scores = [
            math.nan if server.mode == "nan" else _score(json.dumps(q, sort_keys=True))
            for q in queries
        ]
        # json.dumps writes NaN as the bare token NaN, which Python's json reads back.
        self._send(200, json.dumps({"scores": scores}).encode())
