"""cocotb drivers and monitors for Amaranth streams, and payload packing from `lib.data` layouts.

Imported inside the simulator by the testbenches (`spatten.sim.testbenches.tb_*`); it imports
cocotb and Amaranth (pure Python: only `lib.data` / `hdl` shapes, no simulation).

Port naming (trap 8 of the toolchain notes): a top-level port ``i: In(stream.Signature(layout))``
appears in the Verilog as ``i__payload`` (one flat vector holding the whole layout), ``i__valid``
and ``i__ready``; streams with ``always_ready``/``always_valid`` lack the corresponding port.

Packing works from the very layout object the RTL uses (field offsets from iterating it, widths
from ``.size``), so RTL and testbench cannot disagree on bit positions:

    >>> from amaranth.lib import data
    >>> from amaranth.hdl import signed
    >>> beat = data.StructLayout({"data": data.ArrayLayout(signed(8), 2), "last": 1})
    >>> hex(pack(beat, {"data": [1, -1], "last": 1}))
    '0x1ff01'
    >>> unpack(beat, 0x1ff01)
    {'data': [1, -1], 'last': 1}

Values: a `StructLayout`/`UnionLayout`/`FlexibleLayout` is a dict (missing fields pack as 0,
unknown names raise), an `ArrayLayout` is a sequence of its length, an enum field takes a member
or its integer value (unpacks to the member when the value names one), a signed field takes
``-2**(w-1) .. 2**(w-1)-1``, an unsigned one ``0 .. 2**w-1``. Any sub-layout also accepts a plain
non-negative int as its raw bits. Out-of-range values raise ValueError instead of wrapping.

Timing (trap 7): every sample is taken in the ReadOnly phase after a rising edge, when the values
that will be seen at the next edge have settled; every drive happens right after a rising edge.
A transfer therefore happens at the edge following a ReadOnly sample with valid & ready high.
Testbenches start the clock as ``cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())``
(the ``period_ns`` default below matches that) and hold ``dut.rst`` high for a few cycles first;
`clock_and_reset(dut)` does both.
"""

from __future__ import annotations

import enum as py_enum
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import cocotb
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

__all__ = ["with_timeout", "pack", "unpack", "payload_width", "Codec", "StreamSource", "StreamSink",
           "StreamRuleError", "clock_and_reset"]


_NAP_CYCLES = 64


class StreamRuleError(AssertionError):
    """The stream contract was broken: valid dropped or payload changed while stalled, or the
    payload held X/Z bits while valid."""


# -------------------------------------------------------------------------------------------------
# Packing


class Codec:
    """Packer and unpacker compiled once from a layout (or any shape-castable: a plain width,
    ``signed(n)``, an enum class). `pack`/`unpack` below build and cache one per layout."""

    def __init__(self, shape):
        self.shape = shape
        self.width, self._pack, self._unpack = _compile(shape, "payload")

    def pack(self, value) -> int:
        return self._pack(value)

    def unpack(self, bits: int):
        return self._unpack(int(bits))

    def __repr__(self):
        return f"Codec({self.shape!r})"


def _compile(shape, path):
    """(width, pack(value) -> int, unpack(int) -> value) for `shape`; `path` names it in errors."""
    if isinstance(shape, data.ArrayLayout):
        return _compile_array(shape, path)
    if isinstance(shape, data.Layout):
        return _compile_struct(shape, path)
    if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
        return _compile_enum(shape, path)
    return _compile_int(Shape.cast(shape), path)


def _compile_int(shape: Shape, path):
    width, signed = shape.width, shape.signed
    mask = (1 << width) - 1
    lo, hi = (-(1 << width - 1), (1 << width - 1) - 1) if signed and width else (0, mask)
    sign = 1 << (width - 1) if width else 0

    def pack(value):
        v = int(value)
        if not lo <= v <= hi:
            raise ValueError(f"{path}: {value!r} does not fit {shape} (allowed {lo}..{hi})")
        return v & mask

    if signed and width:
        def unpack(bits):
            bits &= mask
            return bits - (sign << 1) if bits & sign else bits
    else:
        def unpack(bits):
            return bits & mask
    return width, pack, unpack


def _compile_enum(enum_cls, path):
    width, ipack, iunpack = _compile_int(Shape.cast(enum_cls), path)
    by_value = {m.value: m for m in enum_cls}

    def pack(value):
        if isinstance(value, enum_cls):
            value = value.value
        elif isinstance(value, py_enum.Enum):
            raise TypeError(f"{path}: {value!r} is not a member of {enum_cls.__name__}")
        return ipack(value)

    def unpack(bits):
        v = iunpack(bits)
        return by_value.get(v, v)
    return width, pack, unpack


def _raw_ok(value, width, path):
    if not 0 <= value < (1 << width):
        raise ValueError(f"{path}: raw value {value} does not fit {width} bits")
    return value


def _compile_array(layout: data.ArrayLayout, path):
    length = layout.length
    ew, epack, eunpack = _compile(layout.elem_shape, f"{path}[]")
    emask = (1 << ew) - 1
    width = layout.size
    shifts = [i * ew for i in range(length)]

    def pack(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return _raw_ok(value, width, path)
        if len(value) != length:
            raise ValueError(f"{path}: expected {length} elements, got {len(value)}")
        bits = 0
        for s, v in zip(shifts, value, strict=True):
            bits |= epack(v) << s
        return bits

    def unpack(bits):
        return [eunpack((bits >> s) & emask) for s in shifts]
    return width, pack, unpack


def _compile_struct(layout: data.Layout, path):
    fields = []
    for name, field in layout:
        fw, fpack, funpack = _compile(field.shape, f"{path}.{name}")
        fields.append((name, field.offset, (1 << fw) - 1, fpack, funpack))
    names = {f[0] for f in fields}
    width = layout.size

    def pack(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return _raw_ok(value, width, path)
        if not isinstance(value, Mapping):
            raise TypeError(f"{path}: expected a dict of {sorted(names)}, not {value!r}")
        unknown = value.keys() - names
        if unknown:
            raise KeyError(f"{path}: unknown field(s) {sorted(unknown)}; "
                           f"the layout has {sorted(names)}")
        bits = 0
        for name, offset, _, fpack, _ in fields:
            if name in value:
                bits |= fpack(value[name]) << offset
        return bits

    def unpack(bits):
        return {name: funpack((bits >> offset) & fmask)
                for name, offset, fmask, _, funpack in fields}
    return width, pack, unpack


_codecs: dict[int, tuple[object, Codec]] = {}


def _codec(layout) -> Codec:
    if isinstance(layout, Codec):
        return layout
    key = id(layout)
    hit = _codecs.get(key)
    if hit is None or hit[0] is not layout:
        hit = (layout, Codec(layout))
        _codecs[key] = hit
    return hit[1]


def pack(layout, value) -> int:
    """The flat unsigned integer of `value` (see the module docstring) under `layout`."""
    return _codec(layout).pack(value)


def unpack(layout, bits: int):
    """The dict / list / int / enum member that the flat integer `bits` holds under `layout`."""
    return _codec(layout).unpack(bits)


def payload_width(layout) -> int:
    """Bits of the flat vector that carries `layout`."""
    return _codec(layout).width


# -------------------------------------------------------------------------------------------------
# Drivers


async def clock_and_reset(dut, period_ns: float = 10.0, cycles: int = 3) -> None:
    """Start a clock on ``dut.clk`` and hold ``dut.rst`` high for `cycles` rising edges; returns
    right after the first edge with reset low (a phase in which signals may be driven)."""
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def _port(dut, prefix, name, required=True):
    full = f"{prefix}__{name}"
    try:
        return getattr(dut, full)
    except AttributeError:
        if required:
            raise AttributeError(f"the design has no port {full!r} (stream prefix {prefix!r})") \
                from None
        return None


def _time_ns():
    return get_sim_time("ns")


class StreamSource:
    """Drives the stream ``<prefix>__payload/valid/ready`` of `dut` (the design's input).

    `send(beats)` queues the beats (dicts/lists/ints as `pack` takes them, under `layout`) and
    returns once all queued beats are transferred; `send_nowait` only queues. Beats queued while
    others are in flight go out back to back, one per cycle when the design is ready and
    `idle_prob` is 0. With `idle_prob` p, before each beat the source stays idle (valid low) for a
    cycle with probability p, repeatedly (a geometric number of idle cycles, mean p/(1-p)).
    `idle_prob` is read before each beat, so a test may change it between phases.
    Once valid is raised it stays high with the same payload until the transfer (stream rule).

    Beats may be given pre-packed as ints (raw bits) to save packing time. The payload keeps its
    last value while valid is low. When the source was idle, the first new beat goes out after the
    next clock edge.

    Counters: `sent` beats transferred, `idle_cycles` inserted. Create it after `dut.clk` runs,
    from a normal (not ReadOnly) phase.
    """

    def __init__(self, dut, prefix: str, clk, layout, idle_prob: float = 0.0,
                 rng: random.Random | None = None):
        if not 0.0 <= idle_prob < 1.0:
            raise ValueError(f"idle_prob must be in [0, 1), not {idle_prob}")
        self.codec = _codec(layout)
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid", required=False)
        self.ready = _port(dut, prefix, "ready", required=False)
        if self.valid is None:
            raise ValueError(f"stream {prefix!r} has no valid port (always_valid streams cannot "
                             "be driven beat by beat)")
        self.clk = clk
        self.idle_prob = idle_prob
        self.rng = rng if rng is not None else random.Random(0)
        self.sent = 0
        self.idle_cycles = 0
        self._queue: deque[int] = deque()
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send_nowait(self, beats: Sequence) -> None:
        pack_ = self.codec.pack
        self._queue.extend(pack_(b) for b in beats)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    async def send(self, beats: Sequence) -> None:
        self.send_nowait(beats)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Until every queued beat has been transferred."""
        await self._idle.wait()

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def stop(self) -> None:
        """Stop driving (valid is left low only if the source was idle). Cocotb stops the
        source by itself at the end of a test."""
        self._task.cancel()

    async def _run(self):
        edge, settled = RisingEdge(self.clk), ReadOnly()
        valid, payload, ready, queue = self.valid, self.payload, self.ready, self._queue
        rnd = self.rng.random
        while True:
            if not queue:
                valid.value = 0
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                await edge  # leave the caller's phase; resume right after an edge
                continue
            bits = queue.popleft()
            idle_prob = self.idle_prob     # read per beat: a test may change it between phases
            if idle_prob:
                while rnd() < idle_prob:
                    valid.value = 0
                    self.idle_cycles += 1
                    await edge
            payload.value = bits
            valid.value = 1
            while True:
                await settled
                accepted = ready is None or ready.value == 1
                await edge
                if accepted:
                    break
            self.sent += 1


class StreamSink:
    """Accepts the stream ``<prefix>__payload/valid/ready`` of `dut` (the design's output) and
    checks its contract.

    Each cycle ready is driven low with probability `stall_prob` (random backpressure), else high.
    `stall_prob` is read every cycle, so a test may change it between phases.
    Every transferred beat is unpacked under `layout` (kept as the raw int with ``raw=True``),
    appended to `beats` and queued for `recv()`/`recv_packet()`, and passed to `callback` if given,
    right after the clock edge that transfers it (a phase in which the receiver may drive signals).
    While valid is low the sink sleeps until it rises (no per-cycle Python work).

    Contract checks, each raising `StreamRuleError` (an AssertionError, which fails the running
    cocotb test) naming the cycle (sim time / `period_ns`) and the time: while valid & ~ready,
    valid must stay high and the payload unchanged at the next cycle; the payload must have no X/Z
    bits while valid. Start it after reset.

    Counters: `stall_cycles` (cycles with valid & ~ready), `received`.
    """

    def __init__(self, dut, prefix: str, clk, layout, stall_prob: float = 0.0,
                 rng: random.Random | None = None, callback: Callable | None = None,
                 raw: bool = False, period_ns: float = 10.0):
        if not 0.0 <= stall_prob < 1.0:
            raise ValueError(f"stall_prob must be in [0, 1), not {stall_prob}")
        self.codec = _codec(layout)
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid", required=False)
        self.ready = _port(dut, prefix, "ready", required=False)
        if self.ready is None and stall_prob:
            raise ValueError(f"stream {prefix!r} has no ready port: it cannot be stalled")
        self.prefix = prefix
        self.clk = clk
        self.stall_prob = stall_prob
        self.rng = rng if rng is not None else random.Random(1)
        self.callback = callback
        self.raw = raw
        self.period_ns = period_ns
        self._nap_ns = _NAP_CYCLES * period_ns
        self.beats: list = []
        self.received = 0
        self.stall_cycles = 0
        self._pending: deque = deque()
        self._arrived = Event()
        self._ready0 = 0 if stall_prob and self.rng.random() < stall_prob else 1
        if self.ready is not None:
            self.ready.value = self._ready0
        self._task = cocotb.start_soon(self._run())

    def _where(self):
        t = _time_ns()
        return f"cycle {round(t / self.period_ns)} (t={t:g} ns)"

    def _fail(self, what):
        raise StreamRuleError(f"stream {self.prefix!r}: {what} at {self._where()}")

    def _deliver(self, bits):
        beat = bits if self.raw else self.codec.unpack(bits)
        self.beats.append(beat)
        self._pending.append(beat)
        self.received += 1
        self._arrived.set()
        if self.callback is not None:
            self.callback(beat)

    async def _run(self):
        edge, settled = RisingEdge(self.clk), ReadOnly()
        valid_rise = RisingEdge(self.valid) if self.valid is not None else None
        valid, payload, ready = self.valid, self.payload, self.ready
        rnd = self.rng.random
        r = 1 if ready is None else self._ready0
        held = None  # payload of a beat stalled in the previous cycle
        reroll = False
        await settled
        while True:
            # read per cycle: a test may change it between phases
            stall_prob = self.stall_prob if ready is not None else 0.0
            v = 1 if valid is None else valid.value == 1
            take = None
            if v:
                try:
                    bits = int(payload.value)
                except ValueError:
                    self._fail(f"payload {payload.value} has X/Z bits while valid")
                if held is not None and bits != held:
                    self._fail(f"payload changed from {held:#x} to {bits:#x} while stalled")
                if r:
                    take, held = bits, None
                else:
                    held = bits
                    self.stall_cycles += 1
            elif held is not None:
                self._fail("valid dropped while stalled (beat withdrawn before its transfer)")
            elif valid_rise is not None and not reroll:
                # Nothing to take: sleep until valid rises (sampled settled, so a rise cannot
                # have happened unseen). With backpressure, also wake every `_NAP_CYCLES` to
                # redraw ready, so that a design holding valid back until ready (against the
                # stream rules) is slowed down, not hung.
                if stall_prob:
                    woke = await First(valid_rise, Timer(self._nap_ns, unit="ns"))
                    reroll = woke is not valid_rise
                else:
                    await valid_rise
                await settled
                continue
            reroll = False
            await edge
            if take is not None:
                # Delivered right after the edge that transfers it, in a phase where the
                # receiver (a callback or a task awaiting recv) may drive signals.
                self._deliver(take)
            if stall_prob:
                r = 0 if rnd() < stall_prob else 1
                ready.value = r
            elif not r:
                r = 1
                ready.value = 1
            await settled

    async def recv(self):
        """The next transferred beat (in order), waiting for it if needed."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        return self._pending.popleft()

    def drain(self) -> list:
        """Every beat transferred and not yet received, in order (without waiting)."""
        out = list(self._pending)
        self._pending.clear()
        return out

    async def recv_packet(self, last: Callable | str = "last") -> list:
        """Beats up to and including the next one whose field `last` (or for which the callable
        `last(beat)`) is true."""
        is_last = last if callable(last) else (lambda b: b[last])
        packet = []
        while True:
            beat = await self.recv()
            packet.append(beat)
            if is_last(beat):
                return packet

    def stop(self) -> None:
        """Stop accepting and checking (ready keeps its last value). Cocotb stops the sink by
        itself at the end of a test."""
        self._task.cancel()

    def clear(self) -> None:
        """Forget the collected beats (`beats` and the `recv` queue)."""
        self.beats.clear()
        self._pending.clear()


async def with_timeout(coro, dut, cycles: int):
    """Await ``coro``, failing (AssertionError) if it has not finished within ``cycles`` clock
    cycles of ``dut.clk``: a hung design fails its test instead of hanging it."""
    task = cocotb.start_soon(coro)
    for _ in range(cycles // 64 + 1):
        await ClockCycles(dut.clk, 64)
        if task.done():
            return task.result()
    task.cancel()
    raise AssertionError(f"nothing within {cycles} cycles (hang)")

