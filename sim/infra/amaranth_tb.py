"""Stream testbenches in the Amaranth simulator: drive sources, collect sinks, stress both.

`run_streams` is the one loop the unit tests share: it presents each source's beats with random
idle cycles, takes each sink's beats under random backpressure, checks on every stalled beat that
the sink's payload held (the stream rules), and stops when every sink has what it expects (after
a few quiet cycles in which no further beat may appear, when asked).
Payloads are given and returned as plain Python values: ints, lists for arrays, dicts for
structures (see `to_py`).
"""

from __future__ import annotations

import itertools
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
                seed: int = 0, rng: random.Random | None = None, max_cycles: int = 100_000,
                setup: Callable | None = None, watch: Callable | None = None,
                sideband: dict | None = None, quiet: int = 0, finish: Callable | None = None,
                sinks_by_count: bool = True) -> dict:
    """Simulate ``dut`` (a component; its sync domain gets a clock).

    sources   {port name: list of payload values} presented in order on ``dut.<name>``
    sinks     {port name: number of beats to collect} from ``dut.<name>``
    gap       probability of an idle cycle before each source beat
    stall     probability that a sink's ready is low in a cycle
    rng       the random source of gaps and stalls (default ``random.Random(seed)``); per cycle
              it draws once per source that may start a beat, then once per sink
    setup     ``async setup(ctx)`` run first (set run-time inputs, fill memories)
    watch     ``watch(ctx, cycle)`` called every cycle (quiet ones too) before the clock edge
    sideband  {source name: [{dut attribute: value} per beat]}: plain inputs set together with
              each beat of that source when it is first presented (held until the next one)
    quiet     cycles simulated after every sink has its beats, in which no sink may be valid
              (an extra beat is an error)
    finish    ``async finish(ctx)`` run last (read counters, final checks)

    Returns {"beats": {sink: [payloads]}, "accepted": {source: [cycles]}, "seen": {sink:
    [cycles]}, "ready": {source: [its ready in every simulated cycle, quiet ones too]},
    "cycles": cycles simulated until every sink had its beats}."""
    rng = random.Random(seed) if rng is None else rng
    side = {name: (sideband or {}).get(name) or [{}] * len(beats)
            for name, beats in sources.items()}
    got = {name: [] for name in sinks}
    seen = {name: [] for name in sinks}
    accepted = {name: [] for name in sources}
    ready_log = {name: [] for name in sources}
    result = {}

    async def tb(ctx):
        if setup is not None:
            await setup(ctx)
        idx = {name: 0 for name in sources}
        presenting = {name: False for name in sources}
        held = {name: None for name in sinks}
        done = None
        for cycle in itertools.count():
            if done is None and all(len(got[n]) >= want for n, want in sinks.items()):
                done = result["cycles"] = cycle
            if done is not None and cycle >= done + quiet:
                break
            if done is None and cycle >= max_cycles:
                raise StreamTimeout(
                    f"no result after {max_cycles} cycles: got "
                    + ", ".join(f"{n} {len(got[n])}/{w}" for n, w in sinks.items())
                    + "; sent " + ", ".join(f"{n} {idx[n]}/{len(b)}" for n, b in sources.items()))
            for name, beats in sources.items():
                port = getattr(dut, name)
                if not presenting[name] and idx[name] < len(beats) and rng.random() >= gap:
                    ctx.set(port.payload, from_py(port.payload.shape(), beats[idx[name]]))
                    for attr, value in side[name][idx[name]].items():
                        ctx.set(getattr(dut, attr), value)
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
                    if done is not None:
                        raise AssertionError(f"{name}: a beat after the last expected one, at "
                                             f"cycle {cycle}")
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
                ready = ctx.get(getattr(dut, name).ready)
                ready_log[name].append(ready)
                if presenting[name] and ready:
                    accepted[name].append(cycle)
                    presenting[name] = False
                    idx[name] += 1
            await ctx.tick()
        if finish is not None:
            await finish(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return {"beats": got, "accepted": accepted, "seen": seen, "ready": ready_log,
            "cycles": result.get("cycles")}
