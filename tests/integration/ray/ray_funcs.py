"""Code the multi-node tests deploy: each answers with the node it ran on (the node's runhouse folder)."""

from __future__ import annotations

import os
import time


def node_folder() -> str:
    """The runhouse folder of the node this runs on (each loopback node has its own)."""
    return os.environ["RH_CONFIG_DIR"]


def where(x: int) -> tuple[int, str]:
    return x, node_folder()


def slow_where(x: int, seconds: float = 1.0) -> tuple[int, str]:
    time.sleep(seconds)
    return x, node_folder()


def ray_nodes_seen_from_user_code() -> tuple[int, int]:
    """Join the cluster's Ray as user code does; the number of live nodes, and a task's answer."""
    import ray

    ray.init(address="auto", logging_level="ERROR")

    @ray.remote(num_cpus=0)
    def square(n: int) -> int:
        return n * n

    alive = sum(1 for node in ray.nodes() if node["Alive"])
    return alive, ray.get(square.remote(7))


class Tally:
    """A stateful instance: counts its calls, says where it lives."""

    def __init__(self) -> None:
        self.count = 0

    def add(self) -> tuple[int, str]:
        self.count += 1
        return self.count, node_folder()
