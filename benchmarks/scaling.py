"""A throughput model of exploration for machines we do not have (16, 64 cores, a vLLM server).

Exploration makes nodes; each new node costs, measured in one ``bench_explore`` run:

- ``py_cpu_s``: CPU of the qlass process (event loop, store, py4j clients), which runs on
  one core at a time (the GIL);
- ``env_cpu_s``: CPU of the simulators' JVMs (steps, resets and replays), which run on any
  core, one JVM per env of the pool;
- ``requests``: policy requests (an expansion asks for its W samples in one request), each
  answered after ``latency_s`` by a server that answers many at once (an API, a vLLM
  server; ``server_rps`` caps its requests per second, default: no cap).

A branch of a tree waits for its policy call while holding its env, so at most ``pool``
branches wait at once, and ``branches_per_tree`` wait per tree in flight: measured, by
Little's law, as the policy calls in flight on average (requests x latency / wall time)
divided by the trees in flight, and assumed to stay the same on a bigger machine (it is a
property of the tree's shape and of how long a node's CPU work is against the latency).
The predicted rate of new nodes on ``cores`` cores is the smallest of four bounds:

    python   1 / py_cpu_s
    cpu      cores / (py_cpu_s + env_cpu_s)
    policy   min(pool, trees * branches_per_tree) / (requests * latency_s)
    server   server_rps / requests

(the policy bound only where ``latency_s > 0``: with an instant policy no branch waits).
The reference explorer is sequential (one env, one request at a time), so more cores do
not help it: its predicted rate is its measured one. (Its CPU per node overstates its wall
time per node: a JVM's own threads, its collector and JIT compiler, run beside the
simulation.)

What the model leaves out, and how to read its checks: it assumes the cores idle (the
load average is printed beside each check), ignores contention between the JVMs and the
loop for caches and memory bandwidth, and treats ``branches_per_tree`` as fixed (it moved
between 0.6 and 0.8 in runs of the same trees on 1 and 2 busy cores, so predictions where
the policy bound binds carry about that much uncertainty). In the run it was measured on,
a binding policy bound reproduces the measured rate by construction; the CPU bounds, with
``--policy-latency 0``, are the independent check.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NodeCosts", "predicted_nodes_per_s"]


@dataclass(frozen=True, slots=True)
class NodeCosts:
    """What one new node costs, measured (see the module docstring)."""

    py_cpu_s: float
    env_cpu_s: float
    requests: float
    branches_per_tree: float

    @property
    def cpu_s(self) -> float:
        return self.py_cpu_s + self.env_cpu_s


def predicted_nodes_per_s(
    costs: NodeCosts,
    *,
    cores: float,
    pool: int,
    trees: int,
    latency_s: float,
    server_rps: float | None = None,
) -> tuple[float, str]:
    """New nodes per second on ``cores`` cores and the bound that sets it."""
    bounds = {"python": 1 / costs.py_cpu_s, "cpu": cores / costs.cpu_s}
    if latency_s > 0:  # with an instant policy no branch waits: only the CPU bounds
        in_flight = min(float(pool), trees * costs.branches_per_tree)
        bounds["policy"] = in_flight / (costs.requests * latency_s)
    if server_rps is not None:
        bounds["server"] = server_rps / costs.requests
    limit = min(bounds, key=bounds.__getitem__)
    return bounds[limit], limit
