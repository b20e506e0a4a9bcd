"""Zero eliminator of the top-k engine: moves the kept elements of a beat to its low lanes.

SpAtten's zero eliminator (HPCA 2021, section IV-B): an exclusive prefix count of the *empty*
lanes gives every kept element the distance it has to move down; log2(lanes) shift stages then
move it, stage r by 2**r lanes when bit r of that distance is set. Two kept elements never land on
the same lane in any stage, so each stage is one 2-to-1 multiplexer per lane.

Shared beat layouts (also used by `hw.common.packer` and the tests):

- `keep_layout(payload_shape, lanes)`: ``{"data": ArrayLayout(payload_shape, lanes),
  "keep": unsigned(lanes), "last": unsigned(1)}``, one flag per lane: keep it or drop it.
- `compact_layout(payload_shape, lanes)`: ``{"data": ArrayLayout(payload_shape, lanes),
  "count": range(lanes + 1), "last": unsigned(1)}``, items in data[0..count-1].
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import zero_eliminator_latency

__all__ = ["keep_layout", "compact_layout", "PrefixCount", "ZeroEliminator", "check_lanes",
           "check_payload_shape"]


def check_lanes(lanes) -> int:
    """Validate a lane count: an int, power of two, 1..32. Returns it."""
    if not isinstance(lanes, int) or isinstance(lanes, bool):
        raise TypeError(f"lanes must be an integer, not {lanes!r}")
    if lanes not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"lanes must be a power of two from 1 to 32 "
                         f"(1, 2, 4, 8, 16 or 32), not {lanes}")
    return lanes


def check_payload_shape(payload_shape):
    """Validate an element shape: anything shape-castable, at least 1 bit wide. Returns it."""
    try:
        width = Shape.cast(payload_shape).width
    except TypeError as exc:
        raise TypeError(f"payload_shape must be a shape-castable object (e.g. unsigned(16), "
                        f"signed(8), a data layout), not {payload_shape!r}") from exc
    if width < 1:
        raise ValueError(f"payload_shape must be at least 1 bit wide, not {payload_shape!r}")
    return payload_shape


def keep_layout(payload_shape, lanes) -> data.StructLayout:
    """Input beat of `ZeroEliminator`: ``data`` lanes, a ``keep`` flag per lane, ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(payload_shape, lanes),
        "keep": unsigned(lanes),
        "last": unsigned(1),
    })


def compact_layout(payload_shape, lanes) -> data.StructLayout:
    """Compacted beat: ``count`` items in ``data[0..count-1]`` (lanes above are zero), ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(payload_shape, lanes),
        "count": range(lanes + 1),
        "last": unsigned(1),
    })


def _prefix_width(lanes: int) -> int:
    return max(1, (lanes - 1).bit_length())


class PrefixCount(wiring.Component):
    """Exclusive prefix count of a flag vector. Combinational.

    Ports
    -----
    flags : In(lanes)
    prefix : Out(ArrayLayout(unsigned(max(1, ceil(log2(lanes)))), lanes))
        ``prefix[i]`` = number of set flags in lanes ``0..i-1`` (so ``prefix[0] == 0``). Its
        largest value is ``lanes - 1``, hence ceil(log2(lanes)) bits (1 bit when lanes is 1).
    total : Out(range(lanes + 1))
        Number of set flags in all lanes.

    A parallel prefix (Kogge-Stone) of log2(lanes) adder levels, each adder at most
    log2(lanes) + 1 bits wide.
    """

    def __init__(self, lanes):
        self.lanes = check_lanes(lanes)
        super().__init__({
            "flags": In(lanes),
            "prefix": Out(data.ArrayLayout(unsigned(_prefix_width(lanes)), lanes)),
            "total": Out(range(lanes + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        # Inclusive counts; after the level with step s each entry sums up to 2*s flags.
        counts = [self.flags[i] for i in range(lanes)]
        step = 1
        while step < lanes:
            level = []
            for i in range(lanes):
                if i >= step:
                    s = Signal(range(2 * step + 1), name=f"incl_{step}_{i}")
                    m.d.comb += s.eq(counts[i] + counts[i - step])
                    level.append(s)
                else:
                    level.append(counts[i])
            counts = level
            step *= 2
        m.d.comb += self.prefix[0].eq(0)
        for i in range(1, lanes):
            m.d.comb += self.prefix[i].eq(counts[i - 1])
        m.d.comb += self.total.eq(counts[lanes - 1])
        return m


class ZeroEliminator(wiring.Component):
    """Compacts the kept elements of each beat into its low lanes, in their original order.

    Parameters
    ----------
    payload_shape : shape-castable, at least 1 bit
        Shape of one element.
    lanes : int
        Elements per beat: 1, 2, 4, 8, 16 or 32.

    Ports
    -----
    i : In(stream.Signature(keep_layout(payload_shape, lanes)))
        ``data``, ``keep`` (bit j set: keep lane j), ``last`` (passed through, not interpreted).
    o : Out(stream.Signature(compact_layout(payload_shape, lanes)))
        ``count`` = number of kept lanes; ``data[0..count-1]`` = the kept elements in lane
        order; ``data[j]`` for ``j >= count`` is zero; ``last`` as given.

    Contract
    --------
    Exactly one output beat per input beat, in order, including beats that keep nothing
    (``count == 0``). Latency ``self.latency`` = `spatten.config.zero_eliminator_latency(lanes)`
    = ``1 + ceil(log2(lanes) / 2)`` cycles (1, 2, 2, 3, 3, 4 for 1, 2, 4, 8, 16, 32 lanes): a beat
    accepted at the clock edge ending cycle t shows on ``o`` in cycle ``t + latency`` when ``o``
    is not stalled. Throughput one beat per cycle. The pipeline stalls as a whole:
    ``i.ready = ~o.valid | o.ready`` (combinational from ``o.ready``); while ``o.valid & ~o.ready``
    nothing moves and ``o.payload`` holds. Bubbles are not squeezed out.

    Structure: the prefix count of the empty lanes, a register, then the shift stages with a
    register after every second one (and after the last). ``count`` is computed after the first
    register.
    """

    def __init__(self, payload_shape, lanes):
        self.payload_shape = check_payload_shape(payload_shape)
        self.lanes = check_lanes(lanes)
        self._width = Shape.cast(payload_shape).width
        self.shift_stages = (lanes - 1).bit_length()
        self.latency = zero_eliminator_latency(lanes)
        assert self.latency == 1 + (self.shift_stages + 1) // 2
        super().__init__({
            "i": In(stream.Signature(keep_layout(payload_shape, lanes))),
            "o": Out(stream.Signature(compact_layout(payload_shape, lanes))),
        })

    def _shift_stage(self, m, r, elems):
        """One shift stage: element at lane j+2**r with bit r of its shift set moves to lane j.

        `elems` is a list of (data, valid, shift) per lane (Amaranth values); returns the same for
        the stage output. A lane with no valid element gets zero data. Tests override this method
        to build deliberately broken variants.
        """
        lanes = self.lanes
        dist = 1 << r
        out = []
        for j in range(lanes):
            d_here, v_here, s_here = elems[j]
            stay = v_here & ~s_here[r]
            d = Signal(self._width, name=f"s{r}_data_{j}")
            v = Signal(name=f"s{r}_valid_{j}")
            s = Signal(len(s_here), name=f"s{r}_shift_{j}")
            if j + dist < lanes:
                d_up, v_up, s_up = elems[j + dist]
                move = v_up & s_up[r]
                with m.If(move):
                    m.d.comb += [d.eq(d_up), v.eq(1), s.eq(s_up)]
                with m.Elif(stay):
                    m.d.comb += [d.eq(d_here), v.eq(1), s.eq(s_here)]
            else:
                with m.If(stay):
                    m.d.comb += [d.eq(d_here), v.eq(1), s.eq(s_here)]
            out.append((d, v, s))
        return out

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        i, o = self.i, self.o
        n_regs = self.latency
        sw = _prefix_width(lanes)

        # Stage valid bits; all registers advance together.
        valid = [Signal(name=f"valid_{k}") for k in range(n_regs)]
        adv = Signal()
        m.d.comb += [
            adv.eq(~o.valid | o.ready),
            i.ready.eq(adv),
            o.valid.eq(valid[-1]),
        ]
        with m.If(adv):
            m.d.sync += valid[0].eq(i.valid)
            for k in range(1, n_regs):
                m.d.sync += valid[k].eq(valid[k - 1])

        # Prefix count of the empty lanes: each kept element's downward shift.
        m.submodules.prefix = prefix = PrefixCount(lanes)
        m.d.comb += prefix.flags.eq(~i.payload.keep)

        # Register 0: data (zeroed where not kept), keep flags as element valid bits, shifts.
        elems = []
        for j in range(lanes):
            d = Signal(self._width, name=f"r0_data_{j}")
            v = Signal(name=f"r0_valid_{j}")
            s = Signal(sw, name=f"r0_shift_{j}")
            with m.If(adv):
                m.d.sync += [
                    d.eq(Mux(i.payload.keep[j], Value.cast(i.payload.data[j]), 0)),
                    v.eq(i.payload.keep[j]),
                    s.eq(prefix.prefix[j]),
                ]
            elems.append((d, v, s))
        last = Signal(name="r0_last")
        with m.If(adv):
            m.d.sync += last.eq(i.payload.last)

        # Count of kept elements, from register 0: lanes - (empty lanes before the last lane)
        # - (last lane empty).
        count = Signal(range(lanes + 1), name="count_0")
        s_last, v_last = elems[lanes - 1][2], elems[lanes - 1][1]
        m.d.comb += count.eq(lanes - s_last - ~v_last)

        # Shift stages, a register after every second one and after the last.
        for k in range(1, n_regs):
            for r in (2 * (k - 1), 2 * (k - 1) + 1):
                if r < self.shift_stages:
                    elems = self._shift_stage(m, r, elems)
            regd = []
            for j, (d, v, s) in enumerate(elems):
                dr = Signal(self._width, name=f"r{k}_data_{j}")
                vr = Signal(name=f"r{k}_valid_{j}")
                sr = Signal(sw, name=f"r{k}_shift_{j}")
                with m.If(adv):
                    m.d.sync += [dr.eq(d), vr.eq(v), sr.eq(s)]
                regd.append((dr, vr, sr))
            elems = regd
            last_r = Signal(name=f"r{k}_last")
            count_r = Signal(range(lanes + 1), name=f"count_{k}")
            with m.If(adv):
                m.d.sync += [last_r.eq(last), count_r.eq(count)]
            last, count = last_r, count_r

        for j, (d, _v, _s) in enumerate(elems):
            m.d.comb += Value.cast(o.payload.data[j]).eq(d)
        m.d.comb += [o.payload.count.eq(count), o.payload.last.eq(last)]
        return m
