"""A small WebShop env server for the tests: AgentGym's HTTP interface over a toy shop.

Same routes and payloads as AgentGym's ``agentenv-webshop`` server; pages use WebShop's
simple text mode (elements joined by ``[SEP]``). Actions are ``search[...]`` and
``click[...]``; an action that does not apply leaves the page as it is (as in WebShop).
Buying ends the episode with a reward: a third each for the right product, the right
options and a price under the limit.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

PRODUCTS: list[dict[str, Any]] = [
    {
        "asin": "B0TEST0001",
        "name": "Bright citrus deodorant for sensitive skin, 3 ounce bottle",
        "price": 12.50,
        "options": {
            "size": ["3 ounce (pack of 1)", "6 ounce"],
            "scent": ["bright citrus", "lavender"],
        },
    },
    {
        "asin": "B0TEST0002",
        "name": "Men's slim fit jeans, machine wash",
        "price": 39.99,
        "options": {"size": ["32w x 30l", "34w x 32l"], "color": ["blue", "black"]},
    },
    {
        "asin": "B0TEST0003",
        "name": "Gluten free dark chocolate bar, 12 pack",
        "price": 24.00,
        "options": {"flavor": ["sea salt", "almond"]},
    },
    {
        "asin": "B0TEST0004",
        "name": "Lavender deodorant stick, 6 ounce",
        "price": 9.00,
        "options": {"size": ["6 ounce"]},
    },
]
GOALS: list[dict[str, Any]] = [
    {
        "instruction": "i need a bright citrus deodorant for sensitive skin in a 3 ounce bottle, "
        "and price lower than 30.00 dollars",
        "asin": "B0TEST0001",
        "options": {"size": "3 ounce (pack of 1)", "scent": "bright citrus"},
        "price_upper": 30.0,
    },
    {
        "instruction": "i want black slim fit jeans for men in size 34w x 32l, and price lower "
        "than 50.00 dollars",
        "asin": "B0TEST0002",
        "options": {"size": "34w x 32l", "color": "black"},
        "price_upper": 50.0,
    },
    {
        "instruction": "find me a gluten free dark chocolate with sea salt, and price lower than "
        "30.00 dollars",
        "asin": "B0TEST0003",
        "options": {"flavor": "sea salt"},
        "price_upper": 30.0,
    },
]
_ACTION = re.compile(r"^\s*(search|click)\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)


class _Session:
    def __init__(self, goal: dict[str, Any]) -> None:
        self.goal = goal
        self.page = "search"
        self.results: list[dict[str, Any]] = []
        self.product: dict[str, Any] | None = None
        self.chosen: dict[str, str] = {}
        self.done = False

    def observation(self) -> str:
        if self.page == "search":
            return f"WebShop [SEP] Instruction: [SEP] {self.goal['instruction']} [SEP] Search"
        if self.page == "results":
            items = [f"{p['asin']} [SEP] {p['name']} [SEP] ${p['price']:.2f}" for p in self.results]
            head = f"Back to Search [SEP] Page 1 (Total results: {len(self.results)})"
            return " [SEP] ".join([head, *items])
        assert self.product is not None
        parts = ["Back to Search", "< Prev"]
        for key, values in self.product["options"].items():
            parts += [key, *values]
        parts += [self.product["name"], f"Price: ${self.product['price']:.2f}", "Buy Now"]
        return " [SEP] ".join(parts)

    def clickables(self) -> list[str]:
        if self.page == "search":
            return ["search"]
        if self.page == "results":
            return ["back to search", *(p["asin"].lower() for p in self.results)]
        assert self.product is not None
        options = [v for values in self.product["options"].values() for v in values]
        return ["back to search", "< prev", *options, "buy now"]

    def step(self, action: str) -> tuple[str, float, bool]:
        match = _ACTION.match(action)
        if self.done or match is None:
            return self.observation(), 0.0, self.done
        kind, arg = match.group(1).lower(), match.group(2).strip().lower()
        if kind == "search" and self.page == "search" and arg:
            words = set(re.findall(r"\w+", arg))
            scored = [
                (len(words & set(re.findall(r"\w+", p["name"].lower()))), p) for p in PRODUCTS
            ]
            self.results = [p for n, p in sorted(scored, key=lambda x: -x[0]) if n > 0]
            self.page = "results"
        elif kind == "click" and arg in self.clickables():
            return self._click(arg)
        return self.observation(), 0.0, False

    def _click(self, arg: str) -> tuple[str, float, bool]:
        if arg == "back to search":
            self.page, self.product, self.chosen = "search", None, {}
        elif arg == "< prev":
            self.page, self.product, self.chosen = "results", None, {}
        elif self.page == "results":
            self.product = next(p for p in self.results if p["asin"].lower() == arg)
            self.page = "item"
        elif arg == "buy now":
            self.done = True
            reward = self._reward()
            return (
                f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {reward:.2f}",
                reward,
                True,
            )
        else:
            assert self.product is not None
            for key, values in self.product["options"].items():
                if arg in values:
                    self.chosen[key] = arg
            return f"You have clicked {arg}.", 0.0, False
        return self.observation(), 0.0, False

    def _reward(self) -> float:
        assert self.product is not None
        goal = self.goal
        right_product = self.product["asin"] == goal["asin"]
        wanted = goal["options"]
        options = sum(self.chosen.get(k) == v for k, v in wanted.items()) / len(wanted)
        cheap = self.product["price"] <= goal["price_upper"]
        return round((right_product + (options if right_product else 0.0) + cheap) / 3, 4)


class StepQuery(BaseModel):
    env_idx: int
    action: str


class ResetQuery(BaseModel):
    env_idx: int
    session_id: int | None = None


class CloseQuery(BaseModel):
    env_idx: int


def create_app() -> FastAPI:
    """A fresh server app with its own env table."""
    app = FastAPI()
    envs: dict[int, _Session] = {}
    ids = itertools.count()

    def get(env_idx: int) -> _Session:
        if env_idx not in envs:
            raise HTTPException(status_code=404, detail=f"no env {env_idx}")
        return envs[env_idx]

    @app.get("/")
    def hello() -> str:
        return "ok"

    @app.post("/create")
    def create() -> int:
        env_idx = next(ids)
        envs[env_idx] = _Session(GOALS[0])
        return env_idx

    @app.post("/reset")
    def reset(query: ResetQuery) -> list[Any]:
        get(query.env_idx)
        session = _Session(GOALS[(query.session_id or 0) % len(GOALS)])
        envs[query.env_idx] = session
        return [session.observation(), None]

    @app.post("/step")
    def step(query: StepQuery) -> dict[str, Any]:
        state, reward, done = get(query.env_idx).step(query.action)
        return {"state": state, "reward": reward, "done": done, "info": None}

    @app.get("/observation")
    def observation(env_idx: int) -> str:
        return get(env_idx).observation()

    @app.get("/instruction_text")
    def instruction_text(env_idx: int) -> str:
        return str(get(env_idx).goal["instruction"])

    @app.get("/available_actions")
    def available_actions(env_idx: int) -> dict[str, Any]:
        session = get(env_idx)
        return {"has_search_bar": session.page == "search", "clickables": session.clickables()}

    @app.post("/close")
    def close(query: CloseQuery) -> dict[str, bool]:
        return {"closed": envs.pop(query.env_idx, None) is not None}

    @app.get("/list_envs")
    def list_envs() -> list[int]:
        return list(envs)

    return app
