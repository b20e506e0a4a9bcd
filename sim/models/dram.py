"""A DRAM model for simulation: burst reads with latency, bandwidth, random stalls and counters.

`DramModel` is a simulation-only Amaranth component (it is not meant for an FPGA): all of its
per-cycle behaviour is gateware, so it runs inside Verilator or Icarus at the simulator's speed;
the testbench only loads an image, sets three run-time knobs and connects the accelerator's
memory side to ``req``/``resp``. `image_beats` turns a byte image into ``load`` beats (or into the
``init`` of an Amaranth-simulator test), `expected_resp` gives the beats a list of requests must
return, and `lfsr_bytes` the stall generator's byte in each cycle after reset.

    dram = DramModel(beat_bytes=16, depth_beats=4096, init=image_bytes)
    ctx.set(dram.latency, 20); ctx.set(dram.bytes_per_cycle, 4); ctx.set(dram.stall, 32)
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import MemoryConfig

__all__ = ["DramModel", "image_beats", "expected_resp", "lfsr_bytes", "lfsr_next",
           "LFSR_WIDTH", "LFSR_TAPS", "COUNTER_WIDTH"]

COUNTER_WIDTH = 48
LFSR_WIDTH = 32
LFSR_TAPS = 0x80200003         # Galois, shifting right: x^32 + x^22 + x^2 + x + 1 (maximal)
LFSR_STEPS = 8                 # shifts per cycle, so that each cycle's byte is a fresh one


def lfsr_next(state: int) -> int:
    """The stall LFSR's state one cycle after `state` (`LFSR_STEPS` Galois shifts)."""
    for _ in range(LFSR_STEPS):
        state = (state >> 1) ^ (LFSR_TAPS if state & 1 else 0)
    return state


def lfsr_bytes(seed: int, cycles: int) -> list[int]:
    """The stall generator's byte in cycles 0 .. `cycles`-1 after reset (cycle 0 is the first
    cycle with reset low): the model refuses to offer a new beat in cycle c when byte c < stall."""
    out, s = [], seed
    for _ in range(cycles):
        out.append(s & 0xFF)
        s = lfsr_next(s)
    return out


def image_beats(image, beat_bytes: int) -> list[int]:
    """The beats (little-endian ints of ``8 * beat_bytes`` bits) holding the bytes of `image`,
    zero-padded to whole beats: beat k holds bytes ``k*B .. k*B+B-1``, byte k*B+j in bits
    ``8j .. 8j+7``. These are the ``data`` of the ``load`` beats at ``addr`` k, and what the
    ``init`` parameter of `DramModel` takes as a list."""
    if not isinstance(beat_bytes, int) or isinstance(beat_bytes, bool) or beat_bytes < 1:
        raise ValueError(f"beat_bytes must be a positive int, not {beat_bytes!r}")
    image = bytes(image)
    return [int.from_bytes(image[k:k + beat_bytes].ljust(beat_bytes, b"\0"), "little")
            for k in range(0, len(image), beat_bytes)]


def expected_resp(image, beat_bytes: int, depth_beats: int, max_burst: int,
                  requests) -> list[dict]:
    """The ``resp`` beats {data, last, error} that `requests` ((byte address, beats) pairs, in
    order) get from a model holding `image` (bytes; missing bytes read as 0)."""
    B = beat_bytes
    image = bytes(image).ljust(depth_beats * B, b"\0")
    out = []
    for addr, beats in requests:
        if addr % B or not 1 <= beats <= max_burst or addr + beats * B > depth_beats * B:
            out.append({"data": 0, "last": 1, "error": 1})
            continue
        for k in range(beats):
            lo = addr + k * B
            out.append({"data": int.from_bytes(image[lo:lo + B], "little"),
                        "last": int(k == beats - 1), "error": 0})
    return out


def _int_param(name, value, lo, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {allowed}, not {value}")
    return value


def _xor_all(bits):
    out = bits[0]
    for b in bits[1:]:
        out = out ^ b
    return out


class DramModel(wiring.Component):
    """A memory of `depth_beats` beats of `beat_bytes` (B) bytes answering burst read requests in
    order, with a programmable latency, bandwidth and random stalls.

    Parameters (keyword-only): ``beat_bytes`` B (a power of two, 1..64; default the memory side's,
    `MemoryConfig.beat_bytes`), ``depth_beats`` (>= 1), ``max_burst`` (largest good request in
    beats, default 64: more than the fetch unit asks for, `MemoryConfig.max_burst`, so that tests
    can probe longer bursts), ``max_outstanding`` (accepted but unfinished requests, 1..256,
    default `MemoryConfig.max_outstanding`), ``max_latency``
    (sets the width of ``latency``, default 64), ``addr_width`` (bits of the byte address; default
    and minimum: just enough for ``depth_beats * B`` bytes), ``lfsr_seed`` (the stall LFSR's
    state after reset, 1 .. 2**32-1, default 0x5EED1234), ``init`` (the memory's contents after
    reset: bytes-like, a byte image, or a list of beat ints as `image_beats` returns; default
    all zero).

    Ports:

    req : In(stream{addr: unsigned(addr_width), beats: range(max_burst + 1)})
        A read of ``beats`` beats from byte address ``addr`` (a multiple of B). ``ready`` is
        high while fewer than ``max_outstanding`` requests are outstanding (accepted and not
        finished; a request finishes when its last beat transfers); it depends on no input.
    resp : Out(stream{data: unsigned(8 * B), last: 1, error: 1})
        The beats of every request, in request order, back to back; ``last`` marks a request's
        final beat. Byte k of a beat (the byte at address ``a + k``) is ``data[8k : 8k + 8]``.
        ``valid`` and ``payload`` depend only on registers and the ``stall`` input (no path from
        ``req`` or ``resp.ready``); once offered, a beat holds until it transfers.
    load : In(stream{addr: range(depth_beats), data: unsigned(8 * B)})
        Writes ``data`` at beat ``addr``; always ready (``ready`` is 1), one beat per cycle.
        Load the image before requests run: a write to a beat being offered changes it.
    latency : In(range(1, max_latency + 1))      sampled when a request is accepted (0 acts as 1)
    bytes_per_cycle : In(range(1, B + 1))        sampled every cycle (0 acts as 1, > B as B)
    stall : In(8)                                 sampled every cycle; 0 never stalls
    error : Out(1)      sticky: high from the cycle after a bad request is accepted until reset
    requests, beats_served, bytes_served : Out(48)
        Wrapping counts of accepted requests (good and bad), of ``resp`` transfers (error beats
        included), and of bytes served (B per transferred beat of a good request); each counts
        a transfer from the cycle after it.
    outstanding : Out(range(max_outstanding + 1))    accepted and unfinished requests
    busy : Out(1)       ``outstanding != 0``

    A bad request (``addr`` not a multiple of B, ``beats`` 0 or above ``max_burst``, or any byte
    at or beyond ``depth_beats * B``) is accepted like any other and answered, in its place in
    the order, by one beat with error = 1, last = 1, data = 0; it reads nothing, spends no
    bandwidth credit and counts no bytes.

    Timing, exactly. Cycles are counted from the first cycle with reset low (cycle 0). A request
    accepted in cycle t (``req.valid & req.ready`` high in t) with ``latency`` = L sampled in t
    may have its first beat offered (``resp.valid`` high) from cycle t + L on. A beat is offered
    in cycle c when (1) it is next in order: every earlier beat transferred before cycle c, (2)
    its request is due: c >= t + L, and (3) either it was already offered in cycle c - 1 and not
    taken (a stalled beat stays), or both: the credit counter holds at least B (good requests
    only) and the stall LFSR's byte in cycle c (`lfsr_bytes`) is not below ``stall``.
    Bandwidth is a token bucket: the credit counter starts at 2B after reset and at each clock
    edge becomes ``min(credit + bytes_per_cycle - (B if a good beat transfers), 2B)``.

    So with ``bytes_per_cycle = B``, ``stall = 0`` and ``resp.ready`` high, a lone request of n
    beats accepted in cycle t returns its beats in cycles t + L .. t + L + n - 1 (the last beat
    L + n - 1 cycles after acceptance), and requests queued behind it follow with no gap once
    due. Throughput: at most one beat per cycle; in the long run ``bytes_per_cycle / B`` beats
    per cycle while beats are wanted (after an idle spell the full bucket allows a burst of 2
    beats); with ``stall`` s, each new offer is refused with probability about s / 256. A freed
    outstanding slot is usable from the cycle after the last beat's transfer, so a stream of
    n-beat requests runs back to back only when ``max_outstanding >= 1 + ceil(L / n)``; with
    ``max_outstanding = 1`` each request takes L + n cycles.

    Connecting a real memory controller. ``req``/``resp`` is the read half of a burst memory
    port. On an AXI4 read channel: ``req.valid/ready`` are ARVALID/ARREADY, ARADDR = ``addr``,
    ARLEN = ``beats - 1``, ARSIZE = log2(B), ARBURST = INCR, one fixed ARID (so that R returns
    in order); the controller's limit on outstanding reads plays ``max_outstanding``; a burst
    must not cross a 4 KiB boundary nor exceed 256 beats (``max_burst``). ``resp`` is the R
    channel: RDATA = ``data``, RLAST = ``last``, RVALID/RREADY = ``valid/ready``, and RRESP of
    SLVERR or DECERR becomes ``error`` (AXI still returns all ARLEN + 1 beats of a failed burst,
    each with its RRESP; a consumer of this model sees one beat). On a LiteDRAM native port of
    data width 8B: a request becomes ``beats`` commands (``cmd.we = 0``, ``cmd.addr = addr / B +
    k``), ``rdata.data`` is ``data``, ``last`` comes from a beat counter in the adapter, and
    ``error`` is 0 (LiteDRAM has none; an adapter may flag out-of-range addresses itself).
    """

    def __init__(self, *, beat_bytes: int = MemoryConfig.beat_bytes, depth_beats: int,
                 max_burst: int = 64, max_outstanding: int = MemoryConfig.max_outstanding,
                 max_latency: int = 64, addr_width: int | None = None,
                 lfsr_seed: int = 0x5EED_1234, init=None):
        B = _int_param("beat_bytes", beat_bytes, 1, 64)
        if B & (B - 1):
            raise ValueError(f"beat_bytes must be a power of two in 1..64, not {B}")
        depth = _int_param("depth_beats", depth_beats, 1)
        _int_param("max_burst", max_burst, 1)
        _int_param("max_outstanding", max_outstanding, 1, 256)
        _int_param("max_latency", max_latency, 1)
        need = max(1, (depth * B - 1).bit_length())
        if addr_width is None:
            addr_width = need
        _int_param("addr_width", addr_width, 1)
        if addr_width < need:
            raise ValueError(f"addr_width {addr_width} cannot address {depth * B} bytes "
                             f"(depth_beats {depth} x beat_bytes {B}): it must be >= {need}")
        _int_param("lfsr_seed", lfsr_seed, 1, (1 << LFSR_WIDTH) - 1)
        self.beat_bytes = B
        self.depth_beats = depth
        self.max_burst = max_burst
        self.max_outstanding = max_outstanding
        self.max_latency = max_latency
        self.addr_width = addr_width
        self.lfsr_seed = lfsr_seed
        self.credit_cap = 2 * B
        self.init = self._init_words(init)

        self.req_layout = data.StructLayout({"addr": unsigned(addr_width),
                                             "beats": range(max_burst + 1)})
        self.resp_layout = data.StructLayout({"data": unsigned(8 * B), "last": 1, "error": 1})
        self.load_layout = data.StructLayout({"addr": range(depth), "data": unsigned(8 * B)})
        super().__init__({
            "req": In(stream.Signature(self.req_layout)),
            "resp": Out(stream.Signature(self.resp_layout)),
            "load": In(stream.Signature(self.load_layout)),
            "latency": In(range(1, max_latency + 1), init=1),
            "bytes_per_cycle": In(range(1, B + 1), init=B),
            "stall": In(8),
            "error": Out(1),
            "requests": Out(COUNTER_WIDTH),
            "beats_served": Out(COUNTER_WIDTH),
            "bytes_served": Out(COUNTER_WIDTH),
            "outstanding": Out(range(max_outstanding + 1)),
            "busy": Out(1),
        })

    def _init_words(self, init) -> list[int]:
        B, depth = self.beat_bytes, self.depth_beats
        if init is None:
            return []
        if isinstance(init, (bytes, bytearray, memoryview)):
            if len(init) > depth * B:
                raise ValueError(f"init holds {len(init)} bytes; the memory holds {depth * B} "
                                 f"(depth_beats {depth} x beat_bytes {B})")
            return image_beats(init, B)
        if not isinstance(init, (list, tuple)):
            raise TypeError(f"init must be bytes-like (a byte image) or a list of beat ints, "
                            f"not {type(init).__name__}")
        if len(init) > depth:
            raise ValueError(f"init holds {len(init)} beats; depth_beats is {depth}")
        for k, w in enumerate(init):
            if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w < 1 << (8 * B):
                raise ValueError(f"init[{k}] = {w!r} is not a beat of {8 * B} bits")
        return list(init)

    def elaborate(self, platform):
        m = Module()
        B, depth, N = self.beat_bytes, self.depth_beats, self.max_outstanding
        lb = B.bit_length() - 1

        # ---- memory: the load port writes, the head beat reads (asynchronously). Amaranth's
        # Verilog sets every word initially (zeros included), so Icarus reads no X; the read
        # address is always < depth_beats (bad requests read beat 0 and show data 0).
        m.submodules.mem = mem = Memory(shape=unsigned(8 * B), depth=depth, init=self.init)
        wr = mem.write_port()
        rd = mem.read_port(domain="comb")
        m.d.comb += [
            self.load.ready.eq(1),
            wr.en.eq(self.load.valid),
            wr.addr.eq(self.load.payload.addr),
            wr.data.eq(self.load.payload.data),
        ]

        # ---- outstanding requests: a ring of N slots, head = the request being served
        lat_shape = self.latency.shape()
        s_word = Array(Signal(range(depth), name=f"s_word{i}") for i in range(N))
        s_left = Array(Signal(range(self.max_burst + 1), name=f"s_left{i}") for i in range(N))
        s_err = Array(Signal(name=f"s_err{i}") for i in range(N))
        s_wait = Array(Signal(lat_shape, name=f"s_wait{i}") for i in range(N))
        head = Signal(range(N))
        tail = Signal(range(N))
        count = Signal(range(N + 1))

        def step(ptr):
            return Mux(ptr == N - 1, 0, ptr + 1)

        for w in s_wait:                               # countdowns to "due"
            with m.If(w != 0):
                m.d.sync += w.eq(w - 1)

        # ---- accept
        p = self.req.payload
        word = Signal(range(1 << max(1, self.addr_width - lb)))
        m.d.comb += word.eq(p.addr >> lb)
        bad = Signal()
        misaligned = (p.addr[:lb] != 0) if lb else Const(0)
        m.d.comb += bad.eq(misaligned | (p.beats == 0) | (p.beats > self.max_burst)
                           | (word + p.beats > depth))
        accept = Signal()
        m.d.comb += [
            self.req.ready.eq(count < N),
            accept.eq(self.req.valid & self.req.ready),
        ]
        with m.If(accept):
            m.d.sync += [
                s_word[tail].eq(Mux(bad, 0, word)),
                s_left[tail].eq(p.beats),
                s_err[tail].eq(bad),
                s_wait[tail].eq(Mux(self.latency == 0, 0, self.latency - 1)),
                tail.eq(step(tail)),
            ]

        # ---- offer the head's next beat
        h_word, h_left, h_err = s_word[head], s_left[head], s_err[head]
        due = Signal()
        m.d.comb += due.eq((count != 0) & (s_wait[head] == 0))

        # the LFSR advances LFSR_STEPS shifts per cycle: a linear map, each next-state bit the
        # XOR of the current bits whose unit vectors reach it (found by stepping them in Python)
        lfsr = Signal(LFSR_WIDTH, init=self.lfsr_seed)
        images = [lfsr_next(1 << i) for i in range(LFSR_WIDTH)]
        m.d.sync += lfsr.eq(Cat(
            _xor_all([lfsr[i] for i in range(LFSR_WIDTH) if images[i] >> j & 1])
            for j in range(LFSR_WIDTH)))

        cap = self.credit_cap
        credit = Signal(range(cap + 1), init=cap)
        holding = Signal()                             # the beat on resp was offered last cycle
        valid = Signal()
        m.d.comb += valid.eq(due & (holding | (((credit >= B) | h_err)
                                               & (lfsr[:8] >= self.stall))))
        last = h_err | (h_left == 1)
        m.d.comb += [
            rd.addr.eq(h_word),
            self.resp.valid.eq(valid),
            self.resp.payload.data.eq(Mux(h_err, 0, rd.data)),
            self.resp.payload.last.eq(last),
            self.resp.payload.error.eq(h_err),
        ]
        xfer = Signal()
        good = Signal()
        m.d.comb += [xfer.eq(valid & self.resp.ready), good.eq(xfer & ~h_err)]
        m.d.sync += holding.eq(valid & ~self.resp.ready)
        with m.If(xfer):
            with m.If(last):
                m.d.sync += head.eq(step(head))
            with m.Else():
                m.d.sync += [s_word[head].eq(h_word + 1), s_left[head].eq(h_left - 1)]
        done = xfer & last
        with m.If(accept & ~done):
            m.d.sync += count.eq(count + 1)
        with m.Elif(done & ~accept):
            m.d.sync += count.eq(count - 1)

        # ---- bandwidth: token bucket
        bpc = self.bytes_per_cycle
        rate = Mux(bpc == 0, 1, Mux(bpc > B, B, bpc))
        gained = Signal(range(cap + B + 1))
        m.d.comb += gained.eq(credit + rate - Mux(good, B, 0))
        m.d.sync += credit.eq(Mux(gained > cap, cap, gained))

        # ---- status and counters
        with m.If(accept & bad):
            m.d.sync += self.error.eq(1)
        m.d.sync += [
            self.requests.eq(self.requests + accept),
            self.beats_served.eq(self.beats_served + xfer),
            self.bytes_served.eq(self.bytes_served + Mux(good, B, 0)),
        ]
        m.d.comb += [self.outstanding.eq(count), self.busy.eq(count != 0)]
        return m
