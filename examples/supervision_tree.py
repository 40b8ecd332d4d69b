"""A small supervision tree that shows restarts and escalation in its log.

    python examples/supervision_tree.py [--backend asyncio|trio] [--seconds 3]

The tree::

    app (one_for_one)
    ├── flaky         crashes now and then; restarted alone, with backoff
    ├── pair (one_for_all)
    │   ├── producer  casts numbers to the consumer
    │   └── consumer  crashes on multiples of 7; both restart together
    ├── pool          a dynamic supervisor: workers started at run time
    └── fragile (intensity 2 in 10 s) with a child that crashes in a loop:
                      fragile gives up, and app restarts it (escalation)

It runs for ``--seconds`` and then shuts down in order; the exit status is 0.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import anyio

from supervisor import (
    Actor,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    Tree,
    configure_logging,
    run_application,
)


class Flaky(Actor):
    """Ticks every 50 ms and crashes on one tick in five."""

    async def on_start(self) -> None:
        self.send_after(0.05, "tick")

    async def handle_info(self, msg: Any) -> None:
        if random.random() < 0.2:
            raise RuntimeError("flaky worker lost its connection")
        self.send_after(0.05, "tick")


class Producer(Actor):
    async def on_start(self) -> None:
        self.n = 0
        self.send_after(0.02, "produce")

    async def handle_info(self, msg: Any) -> None:
        self.n += 1
        await self.tree.ref("consumer").cast(self.n)
        self.send_after(0.02, "produce")


class Consumer(Actor):
    async def on_start(self) -> None:
        self.total = 0

    async def handle_cast(self, msg: int) -> None:
        if msg % 7 == 0:
            raise ValueError(f"consumer cannot digest {msg}")
        self.total += msg


class Doomed(Actor):
    async def on_start(self) -> None:
        self.send_after(0.3, "fail")

    async def handle_info(self, msg: Any) -> None:
        raise RuntimeError("doomed worker fails every time")


class PoolWorker(Actor):
    async def handle_call(self, msg: Any) -> Any:
        return f"{self.path} got {msg}"


def build() -> SupervisorSpec:
    """The example's tree."""
    return SupervisorSpec("app", intensity=20, period=5.0, children=[
        ChildSpec("flaky", Flaky, backoff=Backoff(min=0.05, max=0.5, reset_after=1.0)),
        SupervisorSpec("pair", strategy=Strategy.ONE_FOR_ALL, intensity=20, period=5.0,
                       children=[ChildSpec("producer", Producer),
                                 ChildSpec("consumer", Consumer, name="consumer")]),
        SupervisorSpec("pool", intensity=10, period=5.0, max_children=10),
        SupervisorSpec("fragile", intensity=2, period=10.0,
                       children=[ChildSpec("doomed", Doomed)]),
    ])


async def drive(tree: Tree, seconds: float) -> None:
    """Start a few pool workers, talk to them, then ask the tree to stop."""
    pool = tree.supervisor("pool")
    for i in range(3):
        ref = await pool.start_child(ChildSpec(f"worker-{i}", PoolWorker,
                                               restart=Restart.TEMPORARY))
        print(await ref.call("hello"), file=sys.stderr)
    tree.spawn_system(_stop_later, tree, seconds)


async def _stop_later(tree: Tree, seconds: float) -> None:
    await anyio.sleep(seconds)
    tree.shutdown(0, "example finished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    configure_logging("DEBUG")
    return run_application(build(), backend=args.backend,
                           on_started=lambda tree: drive(tree, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
