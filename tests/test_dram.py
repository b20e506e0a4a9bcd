# amaranth: UnusedElaboratable=no
"""The DRAM model (`sim/dram.py`): data, order, timing, bandwidth, stalls, limits and errors.

Every Amaranth-simulator run here is checked cycle by cycle against `Ref`, a Python transcription
of the timing contract in `DramModel`'s docstring (req.ready, resp.valid and payload, counters,
outstanding, busy, error in every cycle), and its beats against the bytes of the image sliced
independently. Seeded random request sequences (good and every kind of bad request) run at
several latency / bandwidth / stall settings, with random request gaps and response
backpressure, and with the run-time inputs changing under way. Separate tests state the
documented timing as plain numbers (lone request, back to back, outstanding limit, token-bucket
spacing, stall rate), bad requests one by one, the ``load`` port, the helpers and bad
parameters. cocotb runs (`sim/tb_dram.py`, Verilator and Icarus) repeat the random traffic
through the ``load`` port in the simulators the accelerator's tests use.
Set SPATTEN_SEED to fix the seed of the random tests.
"""

import random
import time
from collections import deque

import pytest

from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.models.dram import DramModel, expected_resp, image_beats, lfsr_bytes

TAPS = 0x80200003


def lfsr_byte_seq(seed, n):
    """The stall bytes, written independently of `sim/dram.py`: 8 Galois shifts per cycle."""
    out, s = [], seed
    for _ in range(n):
        out.append(s & 0xFF)
        for _ in range(8):
            s = (s >> 1) ^ (TAPS if s & 1 else 0)
    return out


# ---------------------------------------------------------------------------------------------
# The contract as a cycle model


class Ref:
    """`DramModel`'s documented behaviour, one cycle at a time (see its docstring)."""

    def __init__(self, dut: DramModel, image: bytes):
        self.B, self.depth = dut.beat_bytes, dut.depth_beats
        self.max_burst, self.N = dut.max_burst, dut.max_outstanding
        self.mem = bytearray(bytes(image).ljust(self.depth * self.B, b"\0"))
        self.queue = deque()             # [byte address of next beat, beats left, bad, due]
        self.credit = 2 * self.B
        self.holding = False
        self.stall_bytes = lfsr_byte_seq(dut.lfsr_seed, 1)
        self.lfsr_seed = dut.lfsr_seed
        self.requests = self.beats = self.bytes = 0
        self.error = 0

    def stall_byte(self, c):
        while len(self.stall_bytes) <= c:
            self.stall_bytes = lfsr_byte_seq(self.lfsr_seed, 2 * len(self.stall_bytes) + 64)
        return self.stall_bytes[c]

    def bad(self, addr, beats):
        return (addr % self.B != 0 or beats == 0 or beats > self.max_burst
                or addr + beats * self.B > self.depth * self.B)

    def outputs(self, c, stall):
        """(req.ready, resp.valid, resp payload or None) in cycle c."""
        ready = len(self.queue) < self.N
        if not self.queue or c < self.queue[0][3]:
            return ready, False, None
        addr, left, bad, _ = self.queue[0]
        valid = self.holding or ((self.credit >= self.B or bad) and self.stall_byte(c) >= stall)
        if not valid:
            return ready, False, None
        data = 0 if bad else int.from_bytes(self.mem[addr:addr + self.B], "little")
        return ready, True, {"data": data, "last": int(bad or left == 1), "error": int(bad)}

    def step(self, c, *, req, resp_ready, latency, bpc, stall):
        """Advance past cycle c; `req` is the offered (addr, beats) or None. Returns (accepted,
        transferred payload or None)."""
        ready, valid, beat = self.outputs(c, stall)
        accepted = req is not None and ready
        xfer = beat if valid and resp_ready else None
        self.holding = valid and not resp_ready
        good = xfer is not None and not xfer["error"]
        if xfer is not None:
            self.beats += 1
            head = self.queue[0]
            if xfer["last"]:
                self.queue.popleft()
            else:
                head[0] += self.B
                head[1] -= 1
            if good:
                self.bytes += self.B
        rate = min(max(bpc, 1), self.B)
        self.credit = min(self.credit + rate - (self.B if good else 0), 2 * self.B)
        if accepted:
            addr, beats = req
            bad = self.bad(addr, beats)
            self.queue.append([addr, beats, bad, c + max(latency, 1)])
            self.requests += 1
            self.error |= bad
        return accepted, xfer


# ---------------------------------------------------------------------------------------------
# The harness


def make_dut(image=b"", **params):
    params.setdefault("lfsr_seed", 0x1234_5679)
    return DramModel(init=bytes(image) if image else None, **params)


def simulate(dut, image, requests, *, knobs, gap=0.0, backpressure=0.0, seed=0, load=False,
             idle_after=6, max_cycles=None):
    """Run `requests` ((byte address, beats) pairs) through `dut` (whose memory holds `image`,
    from ``init`` or, with ``load=True``, written through the ``load`` port first) and check
    every output in every cycle against `Ref` (`run_streams` drives req and resp and checks
    the stream rules on resp). `knobs` is a dict {latency, bytes_per_cycle,
    stall} or a function cycle -> that dict. Returns {accepted: [cycles], beats: [(cycle,
    payload)], cycles, final counters}."""
    ref = Ref(dut, image)
    want_beats = len(expected_resp(image, dut.beat_bytes, dut.depth_beats, dut.max_burst,
                                   requests))
    knob_fn = knobs if callable(knobs) else (lambda c: knobs)
    if max_cycles is None:
        slow = 1 + 4 * max(gap, backpressure)
        max_cycles = int(200 + (want_beats * 2 * dut.beat_bytes + 70 * len(requests)) * slow)
    words = image_beats(image, dut.beat_bytes) if load else []
    c0 = len(words)                             # the LFSR ran during the load
    sent, n_beats, counters = 0, 0, None

    async def setup(ctx):
        for k, w in enumerate(words):           # the load port: one beat per cycle
            ctx.set(dut.load.valid, 1)
            ctx.set(dut.load.payload, dut.load_layout.const({"addr": k, "data": w}))
            assert ctx.get(dut.load.ready) == 1
            await ctx.tick()
        ctx.set(dut.load.valid, 0)

    def watch(ctx, cycle):
        nonlocal sent, n_beats, counters
        c = c0 + cycle
        k = knob_fn(c)
        ctx.set(dut.latency, k["latency"])
        ctx.set(dut.bytes_per_cycle, k["bytes_per_cycle"])
        ctx.set(dut.stall, k["stall"])
        r_ready, r_valid, r_beat = ref.outputs(c, k["stall"])
        where = f"cycle {c} (request {sent}/{len(requests)}, beat {n_beats})"
        assert ctx.get(dut.req.ready) == r_ready, f"req.ready differs in {where}"
        assert ctx.get(dut.resp.valid) == r_valid, f"resp.valid differs in {where}"
        if r_valid:
            p = ctx.get(dut.resp.payload)
            got = {"data": int(p.data), "last": int(p.last), "error": int(p.error)}
            assert got == r_beat, f"resp payload differs in {where}: {got} != {r_beat}"
        counters = (ctx.get(dut.requests), ctx.get(dut.beats_served), ctx.get(dut.bytes_served),
                    ctx.get(dut.outstanding), ctx.get(dut.busy), ctx.get(dut.error))
        want = (ref.requests, ref.beats, ref.bytes, len(ref.queue), int(bool(ref.queue)),
                int(ref.error))
        assert counters == want, f"(requests, beats, bytes, outstanding, busy, error) " \
                                 f"{counters} != {want} in {where}"
        accepted, xfer = ref.step(c, req=requests[sent] if ctx.get(dut.req.valid) else None,
                                  resp_ready=ctx.get(dut.resp.ready), latency=k["latency"],
                                  bpc=k["bytes_per_cycle"], stall=k["stall"])
        sent += accepted
        n_beats += xfer is not None

    res = run_streams(dut, sources={"req": [{"addr": a, "beats": n} for a, n in requests]},
                      sinks={"resp": want_beats}, rng=random.Random(seed), gap=gap,
                      stall=backpressure, setup=setup, watch=watch, quiet=idle_after,
                      max_cycles=max_cycles)
    assert sent == len(requests), f"{sent}/{len(requests)} requests in after the last beat"
    names = ("requests", "beats", "bytes", "outstanding", "busy", "error")
    out = {"accepted": res["accepted"]["req"], "cycles": res["cycles"],
           "beats": list(zip(res["seen"]["resp"], res["beats"]["resp"], strict=True)),
           "counters": dict(zip(names, counters, strict=True))}
    # the beats, checked against the image independently of the cycle model
    B = dut.beat_bytes
    padded = bytes(image).ljust(dut.depth_beats * B, b"\0")
    want = []
    for addr, beats in requests:
        if addr % B or not 1 <= beats <= dut.max_burst or addr + beats * B > len(padded):
            want.append((0, 1, 1))
        else:
            want += [(int.from_bytes(padded[a:a + B], "little"), int(a == addr + (beats - 1) * B),
                      0) for a in range(addr, addr + beats * B, B)]
    got = [(b["data"], b["last"], b["error"]) for _, b in out["beats"]]
    assert got == want
    n_good = sum(1 for _, _, e in want if not e)
    assert out["counters"] == {"requests": len(requests), "beats": len(want),
                               "bytes": n_good * B, "outstanding": 0, "busy": 0,
                               "error": int(n_good < len(want))}
    return out


def random_requests(rng, dut, n, bad_rate=0.1):
    """n requests: mostly good bursts of 1..max_burst beats anywhere in the memory; with
    probability `bad_rate` a bad one of a random kind."""
    B, depth, mb = dut.beat_bytes, dut.depth_beats, dut.max_burst
    out = []
    for _ in range(n):
        if rng.random() < bad_rate:
            kind = rng.choice(["misaligned", "zero", "long", "beyond"])
            if kind == "misaligned" and B > 1:
                out.append((rng.randrange(depth) * B + rng.randrange(1, B), 1))
            elif kind == "long" and mb + 1 < 1 << (mb.bit_length()):
                out.append((0, rng.randrange(mb + 1, 1 << mb.bit_length())))
            elif kind == "beyond":
                beats = rng.randrange(1, min(mb, depth) + 1)
                starts = [s for s in range(depth - beats + 1, depth + 1)
                          if s * B < 1 << dut.addr_width]
                out.append((rng.choice(starts) * B, beats) if starts else (0, 0))
            else:
                out.append((rng.randrange(depth) * B, 0))
            continue
        beats = rng.randrange(1, min(mb, depth) + 1)
        out.append((rng.randrange(depth - beats + 1) * B, beats))
    return out


# ---------------------------------------------------------------------------------------------
# Random traffic against the cycle model

SETTINGS = {
    # name: (params, knobs, gap, backpressure)
    "b16-full-rate": (dict(beat_bytes=16, depth_beats=64, max_burst=8),
                      dict(latency=1, bytes_per_cycle=16, stall=0), 0.0, 0.0),
    "b16-quarter-stall": (dict(beat_bytes=16, depth_beats=64, max_burst=8),
                          dict(latency=7, bytes_per_cycle=4, stall=64), 0.3, 0.3),
    "b4-odd-depth": (dict(beat_bytes=4, depth_beats=37, max_burst=6, max_outstanding=2,
                          max_latency=32), dict(latency=20, bytes_per_cycle=3, stall=128),
                     0.1, 0.5),
    "b1-one-outstanding": (dict(beat_bytes=1, depth_beats=50, max_burst=5, max_outstanding=1,
                                max_latency=4), dict(latency=3, bytes_per_cycle=1, stall=0),
                           0.0, 0.2),
    "b64-heavy-stall": (dict(beat_bytes=64, depth_beats=16, max_burst=4, max_outstanding=6),
                        dict(latency=64, bytes_per_cycle=64, stall=200), 0.0, 0.1),
    "b8-wide-addr": (dict(beat_bytes=8, depth_beats=20, max_burst=3, max_outstanding=3,
                          addr_width=12), dict(latency=2, bytes_per_cycle=5, stall=16), 0.2, 0.2),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_random_traffic(name, seed):
    params, knobs, gap, bp = SETTINGS[name]
    rng = random.Random(seed)
    image = rng.randbytes(params["depth_beats"] * params["beat_bytes"] - rng.randrange(3))
    dut = make_dut(image, **params)
    reqs = random_requests(rng, dut, 40)
    t = time.time()
    res = simulate(dut, image, reqs, knobs=knobs, gap=gap, backpressure=bp, seed=seed)
    print(f"{name}: {len(reqs)} requests, {len(res['beats'])} beats in {res['cycles']} cycles "
          f"({time.time() - t:.2f} s)")


def test_knobs_change_under_way(seed):
    """latency, bytes_per_cycle and stall change every few cycles (0 and values above B
    included): latency is taken at acceptance, the others every cycle."""
    rng = random.Random(seed)
    params = dict(beat_bytes=16, depth_beats=48, max_burst=6, max_outstanding=3, max_latency=12)
    image = rng.randbytes(48 * 16)
    dut = make_dut(image, **params)
    sched = {}

    def knobs(c):
        block = c // 5
        if block not in sched:
            sched[block] = dict(latency=rng.randrange(0, 16), bytes_per_cycle=rng.randrange(0, 32),
                                stall=rng.choice([0, 0, 30, 100, 255]))
        return sched[block]

    reqs = random_requests(rng, dut, 40)
    simulate(dut, image, reqs, knobs=knobs, gap=0.2, backpressure=0.2, seed=seed)


def test_load_port(seed):
    """The image written through ``load`` (one beat per cycle, always ready) is what reads
    return; a memory without init reads zero."""
    rng = random.Random(seed)
    params = dict(beat_bytes=8, depth_beats=24, max_burst=8)
    image = rng.randbytes(24 * 8)
    reqs = random_requests(rng, make_dut(**params), 20, bad_rate=0.0)
    simulate(make_dut(**params), image, reqs, load=True,
             knobs=dict(latency=3, bytes_per_cycle=8, stall=0), backpressure=0.3, seed=seed)
    res = simulate(make_dut(**params), b"", [(0, 8), (64, 8), (128, 8)],
                   knobs=dict(latency=3, bytes_per_cycle=8, stall=0))
    assert all(b["data"] == 0 for _, b in res["beats"])


# ---------------------------------------------------------------------------------------------
# The documented timing, as plain numbers

FULL = dict(latency=1, bytes_per_cycle=16, stall=0)


@pytest.mark.parametrize("latency", [1, 2, 5, 17, 0])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_lone_request_timing(latency, n):
    """Accepted in cycle t: beats in t + L .. t + L + n - 1, one per cycle (L = 0 acts as 1)."""
    image = bytes(range(256)) * 2
    dut = make_dut(image, beat_bytes=16, depth_beats=32, max_burst=8)
    res = simulate(dut, image, [(32, n)], knobs=dict(FULL, latency=latency))
    t = res["accepted"][0]
    assert t == 0
    latency = max(latency, 1)
    assert [c for c, _ in res["beats"]] == [t + latency + k for k in range(n)]
    assert res["beats"][-1][0] - t == latency + n - 1


def test_back_to_back():
    """Enough outstanding slots (1 + ceil(L / n)): requests of n beats stream with no gap;
    one slot: each request takes L + n cycles."""
    L, n = 10, 4
    params = dict(beat_bytes=16, depth_beats=64, max_burst=8)
    reqs = [(16 * 4 * k, n) for k in range(12)]
    res = simulate(make_dut(max_outstanding=1 + -(-L // n), **params), b"", reqs,
                   knobs=dict(FULL, latency=L))
    cycles = [c for c, _ in res["beats"]]
    assert cycles == list(range(L, L + 12 * n))
    res = simulate(make_dut(max_outstanding=1 + -(-L // n) - 1, **params), b"", reqs,
                   knobs=dict(FULL, latency=L))
    assert [c for c, _ in res["beats"]] != list(range(L, L + 12 * n))      # one slot short
    res = simulate(make_dut(max_outstanding=1, **params), b"", reqs, knobs=dict(FULL, latency=L))
    assert res["accepted"] == [k * (L + n) for k in range(12)]
    assert [c for c, _ in res["beats"]] == [k * (L + n) + L + j for k in range(12)
                                           for j in range(n)]


def test_outstanding_limit():
    """req.ready falls with max_outstanding requests in flight and rises the cycle after the
    oldest one's last beat."""
    dut = make_dut(beat_bytes=16, depth_beats=16, max_burst=2, max_outstanding=4)
    res = simulate(dut, b"", [(0, 1)] * 6, knobs=dict(FULL, latency=40))
    assert res["accepted"] == [0, 1, 2, 3, 41, 42]
    assert [c for c, _ in res["beats"]] == [40, 41, 42, 43, 81, 82]


@pytest.mark.parametrize("bpc", [1, 4, 5, 8, 15, 16, 0, 31])
def test_bandwidth(bpc):
    """Token bucket: from a full bucket (2B) and a stream of requests, beat k of a long burst
    transfers in the first cycle the bucket holds B; in the long run bpc / B beats per cycle.
    bytes_per_cycle 0 acts as 1, above B as B."""
    B, L = 16, 3
    dut = make_dut(beat_bytes=B, depth_beats=128, max_burst=64, max_outstanding=2)
    reqs = [(0, 64), (64 * B, 64)]
    res = simulate(dut, b"", reqs, knobs=dict(latency=L, bytes_per_cycle=bpc, stall=0))
    cycles = [c for c, _ in res["beats"]]
    bpc = min(max(bpc, 1), B)
    # closed form: credit(c) = min(2B + bpc*c - B*beats_before_c, 2B) for c <= L while idle,
    # then no cap is hit (bpc <= B); beat k goes in the first cycle c >= L with enough credit
    want, credit, c = [], 2 * B, 0
    while len(want) < 128:
        go = c >= L and credit >= B
        credit = min(credit + bpc - (B if go else 0), 2 * B)
        if go:
            want.append(c)
        c += 1
    assert cycles == want
    span = cycles[-1] - cycles[1]
    assert abs(span - 126 * B / bpc) <= 1 + B / bpc
    if B % bpc == 0:            # the full bucket's 2 beats, then exactly one per B / bpc cycles
        assert cycles[:2] == [L, L + 1]
        assert all(b - a == B // bpc for a, b in zip(cycles[2:], cycles[3:], strict=False))


def test_stall_rate(seed):
    """stall s refuses a new offer in cycles whose LFSR byte is below s: about s / 256."""
    seq = lfsr_bytes(0x1234_5679, 4000)
    assert seq == lfsr_byte_seq(0x1234_5679, 4000)
    for s in (0, 64, 128, 192):
        frac = sum(b < s for b in seq) / len(seq)
        assert abs(frac - s / 256) < 0.03, (s, frac)
    dut = make_dut(beat_bytes=16, depth_beats=64, max_burst=64)
    res = simulate(dut, b"", [(0, 64)] * 8, knobs=dict(latency=1, bytes_per_cycle=16, stall=96))
    rate = len(res["beats"]) / (res["beats"][-1][0] - res["beats"][0][0] + 1)
    assert abs(rate - (1 - 96 / 256)) < 0.05, rate


# ---------------------------------------------------------------------------------------------
# Bad requests, one by one

BAD = {
    "misaligned": (8, 1),
    "zero-beats": (0, 0),
    "too-long": (0, 5),                 # max_burst 4, field holds 0..7
    "beyond-end": (14 * 16, 3),         # beats 14, 15, 16 of a 16-beat memory
    "start-beyond": (16 * 16, 1),       # addr_width 9 reaches past the memory
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_request(kind):
    """One error beat (data 0, last, error) in its place; the sticky error flag; the requests
    before and after it served normally; it counts as a request and a beat, not as bytes."""
    image = bytes(range(256))
    dut = make_dut(image, beat_bytes=16, depth_beats=16, max_burst=4, addr_width=9)
    reqs = [(16, 2), BAD[kind], (32, 4), (240, 1)]
    res = simulate(dut, image, reqs, knobs=dict(FULL, latency=4), backpressure=0.3, seed=3)
    beats = [b for _, b in res["beats"]]
    assert len(beats) == 8
    assert beats[2] == {"data": 0, "last": 1, "error": 1}
    assert all(b["error"] == 0 for k, b in enumerate(beats) if k != 2)
    assert beats[3]["data"] == int.from_bytes(image[32:48], "little")
    assert res["counters"] == {"requests": 4, "beats": 8, "bytes": 7 * 16, "outstanding": 0,
                               "busy": 0, "error": 1}


def test_error_beat_timing():
    """An error beat keeps the latency and the order but needs no bandwidth credit."""
    dut = make_dut(beat_bytes=16, depth_beats=16, max_burst=4)
    res = simulate(dut, b"", [(0, 4), (3, 1), (0, 1)],
                   knobs=dict(latency=2, bytes_per_cycle=1, stall=0))
    cycles = [c for c, _ in res["beats"]]
    # credits: 32 until cycle 2, then beats in 2 (32 -> 17) and 3 (17 -> 2), then one each
    # time 14 more cycles refill it to 16: 18 (16 -> 1), 34 (16 -> 1)
    assert cycles[:4] == [2, 3, 18, 34]
    assert cycles[4] == 35                      # the error beat right after, without credit
    assert cycles[5] == 50                      # credit 1 in cycle 35 (unspent), 16 in 50


# ---------------------------------------------------------------------------------------------
# Helpers and parameters


def test_image_beats_and_expected_resp():
    image = bytes(range(1, 20))
    assert image_beats(image, 4) == [0x04030201, 0x08070605, 0x0C0B0A09, 0x100F0E0D,
                                     0x00131211]
    assert image_beats(b"", 16) == []
    want = expected_resp(image, 4, 6, 2, [(4, 2), (2, 1), (20, 2), (16, 1)])
    assert want == [{"data": 0x08070605, "last": 0, "error": 0},
                    {"data": 0x0C0B0A09, "last": 1, "error": 0},
                    {"data": 0, "last": 1, "error": 1},
                    {"data": 0, "last": 1, "error": 1},
                    {"data": 0x00131211, "last": 1, "error": 0}]


def test_init_forms():
    """init as bytes and as the equivalent beat list give the same memory contents."""
    image = bytes(range(64))
    a = make_dut(image, beat_bytes=16, depth_beats=4)
    b = DramModel(beat_bytes=16, depth_beats=4, init=image_beats(image, 16))
    assert a.init == b.init == image_beats(image, 16)
    res = simulate(b, image, [(0, 4)], knobs=FULL)
    assert [x["data"] for _, x in res["beats"]] == image_beats(image, 16)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(beat_bytes=12, depth_beats=4), ValueError, "power of two"),
    (dict(beat_bytes=128, depth_beats=4), ValueError, "beat_bytes"),
    (dict(beat_bytes=0, depth_beats=4), ValueError, "beat_bytes"),
    (dict(beat_bytes=16.0, depth_beats=4), TypeError, "beat_bytes must be an int"),
    (dict(beat_bytes=True, depth_beats=4), TypeError, "beat_bytes"),
    (dict(depth_beats=0), ValueError, "depth_beats"),
    (dict(depth_beats="4"), TypeError, "depth_beats"),
    (dict(depth_beats=4, max_burst=0), ValueError, "max_burst"),
    (dict(depth_beats=4, max_outstanding=0), ValueError, "max_outstanding"),
    (dict(depth_beats=4, max_outstanding=1000), ValueError, "max_outstanding"),
    (dict(depth_beats=4, max_latency=0), ValueError, "max_latency"),
    (dict(depth_beats=4, addr_width=5), ValueError, "addr_width 5 cannot address 64"),
    (dict(depth_beats=4, addr_width=0), ValueError, "addr_width"),
    (dict(depth_beats=4, lfsr_seed=0), ValueError, "lfsr_seed"),
    (dict(depth_beats=4, lfsr_seed=1 << 32), ValueError, "lfsr_seed"),
    (dict(depth_beats=4, lfsr_seed=None), TypeError, "lfsr_seed"),
    (dict(depth_beats=4, init=bytes(65)), ValueError, "65 bytes"),
    (dict(depth_beats=4, init=[0] * 5), ValueError, "5 beats"),
    (dict(depth_beats=4, init=[1 << 128]), ValueError, r"init\[0\]"),
    (dict(depth_beats=4, init="abc"), TypeError, "init"),
])
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        DramModel(**kwargs)


def test_no_depth_default():
    with pytest.raises(TypeError):
        DramModel()                         # depth_beats is required
    dut = DramModel(depth_beats=3)
    assert dut.addr_width == 6 and dut.beat_bytes == 16 and dut.max_burst == 64


# ---------------------------------------------------------------------------------------------
# cocotb: Verilator and Icarus


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_cocotb(sim, seed):
    """The cocotb testbench (`tb_dram.py`): random traffic loaded through ``load``, with
    backpressure and gaps, the timing of a lone request, error and reset; Icarus (4-state) also
    checks that no X reaches ``resp`` or the counters."""
    from spatten.sim.infra.runner import simulator_missing
    from spatten.sim.infra.testbench import run_testbench
    from spatten.sim.testbenches.tb_dram import PARAMS, make_top

    missing = simulator_missing(sim)
    if missing:
        pytest.skip(missing)
    t = time.time()
    res = run_testbench(make_top, name="dram", tag="p0",
                        tb_module="spatten.sim.testbenches.tb_dram",
                        settings={"seed": seed % (1 << 31), "params": PARAMS}, sim=sim)
    print(f"{sim}: {res.summary()} in {time.time() - t:.1f} s (built: {res.built}, "
          f"{res.build_seconds:.1f} s)")
    assert res.failed == 0 and res.passed == len(res.tests) >= 3, res.summary()
