"""Stream testbenches in the Amaranth simulator: drive sources, collect sinks, stress both.

`run_streams` is the one loop the unit tests share: it presents each source's beats with random
idle cycles, takes each sink's beats under random backpressure, checks on every stalled beat that
the sink's payload held (the stream rules), and stops when every sink has what it expects.
Payloads are given and returned as plain Python values: ints, lists for arrays, dicts for
structures (see `to_py`).
"""

from __future__ import annotations

import random
from typing import Callable

from amaranth.lib import data
from amaranth.sim import Simulator

__all__ = ["to_py", "from_py", "run_streams", "StreamTimeout"]


class StreamTimeout(AssertionError):
    """The simulation ran out of cycles before every sink had its beats."""


def to_py(value):
    """A simulator value (int, data.Const of any layout, enum) as ints, lists and dicts."""
    if isinstance(value, data.Const):
        layout = data.Layout.cast(value.shape())
        if isinstance(layout, data.ArrayLayout):
            return [to_py(value[i]) for i in range(layout.length)]
        return {name: to_py(value[name]) for name, _ in layout}
    if hasattr(value, "value") and not isinstance(value, int):      # enum members
        return value.value
    return int(value)


def from_py(shape, value):
    """The inverse of `to_py` for a port of ``shape``: a value `ctx.set` accepts."""
    if isinstance(shape, data.Layout) or isinstance(shape, data.View):
        return data.Layout.cast(shape).const(value)
    return value


def run_streams(dut, *, sources: dict, sinks: dict, gap: float = 0.0, stall: float = 0.0,
                seed: int = 0, max_cycles: int = 100_000, setup: Callable | None = None,
                watch: Callable | None = None, sinks_by_count: bool = True) -> dict:
    """Simulate ``dut`` (a component; its sync domain gets a clock).

    sources   {port name: list of payload values} presented in order on ``dut.<name>``
    sinks     {port name: number of beats to collect} from ``dut.<name>``
    gap       probability of an idle cycle before each source beat
    stall     probability that a sink's ready is low in a cycle
    setup     ``async setup(ctx)`` run first (set run-time inputs, fill memories)
    watch     ``watch(ctx, cycle)`` called every cycle before the clock edge

    Returns {"beats": {sink: [payloads]}, "accepted": {source: [cycles]}, "seen": {sink:
    [cycles]}, "cycles": cycles simulated}."""
    rng = random.Random(seed)
    got = {name: [] for name in sinks}
    seen = {name: [] for name in sinks}
    accepted = {name: [] for name in sources}
    result = {}

    async def tb(ctx):
        if setup is not None:
            await setup(ctx)
        idx = {name: 0 for name in sources}
        presenting = {name: False for name in sources}
        held = {name: None for name in sinks}
        for cycle in range(max_cycles):
            if all(len(got[n]) >= want for n, want in sinks.items()):
                result["cycles"] = cycle
                return
            for name, beats in sources.items():
                port = getattr(dut, name)
                if not presenting[name] and idx[name] < len(beats) and rng.random() >= gap:
                    ctx.set(port.payload, from_py(port.payload.shape(), beats[idx[name]]))
                    presenting[name] = True
                ctx.set(port.valid, presenting[name])
            readies = {}
            for name in sinks:
                port = getattr(dut, name)
                readies[name] = rng.random() >= stall
                ctx.set(port.ready, readies[name])
            if watch is not None:
                watch(ctx, cycle)
            for name in sinks:
                port = getattr(dut, name)
                if ctx.get(port.valid):
                    payload = to_py(ctx.get(port.payload))
                    if held[name] is not None and held[name] != payload:
                        raise AssertionError(f"{name}: payload changed while stalled at cycle "
                                             f"{cycle}: {held[name]} -> {payload}")
                    if readies[name]:
                        got[name].append(payload)
                        seen[name].append(cycle)
                        held[name] = None
                    else:
                        held[name] = payload
                elif held[name] is not None:
                    raise AssertionError(f"{name}: valid dropped while stalled at cycle {cycle}")
            for name in sources:
                port = getattr(dut, name)
                if presenting[name] and ctx.get(port.ready):
                    accepted[name].append(cycle)
                    presenting[name] = False
                    idx[name] += 1
            await ctx.tick()
        raise StreamTimeout(
            f"no result after {max_cycles} cycles: got "
            + ", ".join(f"{n} {len(got[n])}/{w}" for n, w in sinks.items())
            + "; sent " + ", ".join(f"{n} {idx[n]}/{len(b)}" for n, b in sources.items()))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return {"beats": got, "accepted": accepted, "seen": seen, "cycles": result.get("cycles")}
