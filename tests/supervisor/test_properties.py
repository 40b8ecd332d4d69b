"""Property tests: random crash sequences against a model of OTP's rules."""

import anyio
import pytest
from corehelp import FakeClock, worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import (
    EventLog,
    IntensityExceeded,
    Restart,
    Strategy,
    SupervisorSpec,
    add_restart,
    should_restart,
    start_tree,
)

RESTARTS = [Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY]
ops = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["crash", "stop"]),
                         st.sampled_from([0.0, 0.5, 3.0])), min_size=1, max_size=12)


async def scenario(strategy: Strategy, types: list[Restart], steps: list[tuple[int, str, float]]
                   ) -> None:
    clock = FakeClock()
    log = EventLog()
    ids = [f"c{i}" for i in range(len(types))]
    spec = SupervisorSpec("root", strategy=strategy, intensity=3, period=2.0, children=[
        worker(i, restart=t, shutdown=1.0) for i, t in zip(ids, types, strict=True)])
    live = dict(zip(ids, types, strict=True))  # the model: children the supervisor keeps
    running = set(ids)
    history: tuple[float, ...] = ()
    before = len(anyio.get_running_tasks())
    crashed_expected = False
    try:
        async with start_tree(spec, clock=clock, subscribe=[log]) as tree:
            for index, how, advance in steps:
                clock.now += advance
                target = ids[index % len(ids)]
                if target not in running:
                    continue
                ref = tree.whereis(target)
                await ref.cast("crash" if how == "crash" else "stop")
                with anyio.fail_after(5):
                    while ref.alive:
                        await anyio.lowlevel.checkpoint()
                reason = "normal" if how == "stop" else ValueError()
                if not should_restart(live[target], reason):
                    running.discard(target)
                    if live[target] is Restart.TEMPORARY:
                        del live[target]
                else:
                    ok, history = add_restart(history, clock.now, 3, 2.0)
                    if not ok:
                        crashed_expected = True
                        await tree.wait()
                        break
                    order = list(live)
                    if strategy is Strategy.ONE_FOR_ALL:
                        group = order
                    elif strategy is Strategy.REST_FOR_ONE:
                        group = order[order.index(target):]
                    else:
                        group = [target]
                    for c in group:
                        if c != target and live[c] is Restart.TEMPORARY:
                            del live[c]
                            running.discard(c)
                        else:
                            running.add(c)
                infos = await tree.root.which_children()
                assert [i.id for i in infos] == list(live)
                assert {i.id for i in infos if i.state == "running"} == running
                for info in infos:
                    if info.state == "running":
                        assert info.ref is not None and info.ref.alive
    except IntensityExceeded:
        assert crashed_expected
    else:
        assert not crashed_expected
    assert len(anyio.get_running_tasks()) == before


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(list(Strategy)),
       types=st.lists(st.sampled_from(RESTARTS), min_size=1, max_size=4), steps=ops)
def test_random_crash_sequences_follow_the_model(
    backend: str, strategy: Strategy, types: list[Restart], steps: list[tuple[int, str, float]]
) -> None:
    """Live children match the model after every step, intensity is honoured, nothing leaks."""
    anyio.run(scenario, strategy, types, steps, backend=backend)
