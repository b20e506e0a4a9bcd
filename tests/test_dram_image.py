"""The host-side DRAM image: K bit planes, dense row packing, plane layout and alignment, the
beat requests of row runs, and image round trips."""

import numpy as np
import pytest

from spatten.config import preset
from spatten.golden import dram_image as di
from spatten.sim.infra.testbench import pick_seed

EXTREMES = [-2048, 2047, 0, -1]


def rand_layout(d, msb_bits, **kw):
    args = dict(layers=2, kv_heads=2, q_heads=4, n_max=20, m_max=6, d=d, msb_bits=msb_bits)
    args.update(kw)
    return di.ImageLayout(**args)


# --------------------------------------------------------------------------------------------
# Image round trips
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("msb_bits", [8, 6, 4, 11])
@pytest.mark.parametrize("d", [8, 32, 64])
def test_image_round_trip(d, msb_bits):
    seed = pick_seed() + 100 * d + msb_bits
    print("seed of this case", seed)
    rng = np.random.default_rng(seed)
    lay = rand_layout(d, msb_bits)
    n, m = 17, 5  # fewer than n_max / m_max: the unused rows must read back as zero
    k = rng.integers(-2048, 2048, (2, 2, n, d))
    v = rng.integers(-2048, 2048, (2, 2, n, d))
    q = rng.integers(-2048, 2048, (2, 4, m, d))
    k.flat[:4] = EXTREMES
    v.flat[-4:] = EXTREMES
    q.flat[:4] = EXTREMES
    image = di.build_image(lay, k, v, q)
    assert isinstance(image, bytes) and len(image) == lay.size

    got = di.read_image(lay, image, n=n, m=m)
    msb, lsb = di.split_k(k, 12, msb_bits)
    for name, want in (("k", k), ("k_msb", msb), ("k_lsb", lsb), ("v", v), ("q", q)):
        assert np.array_equal(getattr(got, name), want), name
        assert getattr(got, name).dtype == np.int64

    full = di.read_image(lay, image)
    assert full.k.shape == (2, 2, 20, d) and full.q.shape == (2, 4, 6, d)
    assert not full.k[:, :, n:].any() and not full.v[:, :, n:].any()
    assert not full.q[:, :, m:].any()
    assert np.array_equal(full.k[:, :, :n], k)

    # Each plane holds exactly pack_rows of its rows, and every byte outside them is zero.
    raw = np.frombuffer(image, dtype=np.uint8)
    used = np.zeros(len(image), dtype=bool)
    for kind, layer, head, plane in lay.planes():
        src = {"k_msb": msb, "k_lsb": lsb, "v": v, "q": q}[kind][layer, head]
        data = di.pack_rows(src, plane.elem_bits, plane.signed)
        assert image[plane.base:plane.base + len(data)] == data
        used[plane.base:plane.base + len(data)] = True
    assert not raw[~used].any()


def test_msb_plane_independent_of_lsbs():
    """Changing only the LSBs of K changes only the LSB plane: an MSB fetch reads MSB bytes."""
    rng = np.random.default_rng(pick_seed())
    lay = rand_layout(32, 6, layers=1, kv_heads=1, q_heads=1)
    k = rng.integers(-2048, 2048, (1, 1, 20, 32))
    k2 = (k & ~63) | rng.integers(0, 64, k.shape)
    v = np.zeros_like(k)
    q = np.zeros((1, 1, 6, 32), dtype=np.int64)
    a, b = di.build_image(lay, k, v, q), di.build_image(lay, k2, v, q)
    hg = lay.head_group(0, 0)
    assert a[hg.k_msb.base:hg.k_msb.end] == b[hg.k_msb.base:hg.k_msb.end]
    assert a[hg.k_lsb.base:hg.k_lsb.end] != b[hg.k_lsb.base:hg.k_lsb.end]


def test_pack_round_trip_large():
    rng = np.random.default_rng(pick_seed())
    for bits, signed in ((12, True), (8, True), (4, False), (6, False), (1, False), (16, True)):
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
        a = rng.integers(lo, hi, (1024, 64))
        buf = di.pack_rows(a, bits, signed)
        assert len(buf) == 1024 * 64 * bits // 8
        assert np.array_equal(di.unpack_rows(buf, 1024, 64, bits, signed), a)


# --------------------------------------------------------------------------------------------
# Bit layout
# --------------------------------------------------------------------------------------------

def test_pack_rows_hand_worked():
    # 12 bits, 2 x 2: 0x123 | 0xFFF << 12, then 0x800 | 0x7FF << 12, little-endian.
    assert di.pack_rows([[0x123, -1], [-2048, 2047]], 12) == bytes(
        [0x23, 0xF1, 0xFF, 0x00, 0xF8, 0x7F])
    # 4 bits unsigned: low nibble first.
    assert di.pack_rows([[1, 2], [0xA, 0xF]], 4, signed=False) == bytes([0x21, 0xFA])
    # 6 bits signed, one row of 4: 1 | 63 << 6 | 31 << 12 | 32 << 18 = 0x81FFC1.
    assert di.pack_rows([[1, -1, 31, -32]], 6) == bytes([0xC1, 0xFF, 0x81])
    # A 6-bit row of 8 elements is 6 bytes; the second row starts on byte 6.
    buf = di.pack_rows([[0] * 8, [1] + [0] * 7], 6, signed=False)
    assert buf == bytes(6) + bytes([1, 0, 0, 0, 0, 0])
    # and back
    assert di.unpack_rows(bytes([0x23, 0xF1, 0xFF, 0x00, 0xF8, 0x7F]), 2, 2, 12).tolist() == [
        [0x123, -1], [-2048, 2047]]
    assert di.unpack_rows(bytes([0xC1, 0xFF, 0x81]), 1, 4, 6, signed=False).tolist() == [
        [1, 63, 31, 32]]
    assert di.pack_rows(np.zeros((0, 8), dtype=np.int64), 12) == b""
    assert di.unpack_rows(b"", 0, 8, 12).shape == (0, 8)


def test_extremes_survive():
    a = np.array(EXTREMES * 4).reshape(2, 8)
    assert np.array_equal(di.unpack_rows(di.pack_rows(a, 12), 2, 8, 12), a)
    for msb_bits in range(1, 12):
        msb, lsb = di.split_k(a, 12, msb_bits)
        assert np.array_equal(di.merge_k(msb, lsb, 12 - msb_bits), a)
        assert msb.min() >= -(1 << (msb_bits - 1)) and msb.max() < 1 << (msb_bits - 1)
    msb, lsb = di.split_k(EXTREMES, 12, 8)
    assert msb.tolist() == [-128, 127, 0, -1] and lsb.tolist() == [0, 15, 0, 15]


def test_pack_errors():
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        di.pack_rows([[1, 2, 3]], 12)
    with pytest.raises(ValueError, match=r"a\[1, 0\] = 2048 is out of the 12-bit signed range"):
        di.pack_rows([[0, 0], [2048, 0]], 12)
    with pytest.raises(ValueError, match=r"a\[0, 1\] = -1 is out of the 4-bit unsigned"):
        di.pack_rows([[0, -1]], 4, signed=False)
    with pytest.raises(ValueError, match="2-D"):
        di.pack_rows([1, 2], 4)
    with pytest.raises(TypeError, match="integers"):
        di.pack_rows([[0.5, 1.0]], 4)
    with pytest.raises(ValueError, match="are 3 bytes, not 4"):
        di.unpack_rows(bytes(4), 1, 2, 12)
    with pytest.raises(ValueError, match="whole number of bytes"):
        di.unpack_rows(bytes(3), 1, 3, 12)


# --------------------------------------------------------------------------------------------
# K planes and the MSB estimate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("msb_bits", [8, 6, 4, 11, 1])
def test_split_merge_estimate_exhaustive(msb_bits):
    width, lsb_bits = 12, 12 - msb_bits
    k = np.arange(-2048, 2048)
    msb, lsb = di.split_k(k, width, msb_bits)
    assert np.array_equal(msb, k // (1 << lsb_bits))
    assert lsb.min() == 0 and lsb.max() == (1 << lsb_bits) - 1
    assert np.array_equal(di.merge_k(msb, lsb, lsb_bits), k)

    half = 1 << (lsb_bits - 1)
    mid = di.msb_estimate(msb, lsb_bits, "mid", width=width)
    zero = di.msb_estimate(msb, lsb_bits, "zero")
    assert np.array_equal(zero, msb << lsb_bits)
    assert np.array_equal(mid, (msb << lsb_bits) + half)
    for est in (mid, zero):
        assert est.min() >= -2048 and est.max() <= 2047
    assert mid.min() == -2048 + half and mid.max() == 2048 - half
    err = k - mid
    assert err.min() == -half and err.max() == half - 1
    assert (k - zero).min() == 0 and (k - zero).max() == (1 << lsb_bits) - 1


def test_k_plane_errors():
    with pytest.raises(ValueError, match=r"msb_bits must be in \[1, 11\], not 12"):
        di.split_k([0], 12, 12)
    with pytest.raises(ValueError, match=r"msb_bits must be in \[1, 11\], not 0"):
        di.split_k([0], 12, 0)
    with pytest.raises(ValueError, match=r"k\[1\] = -2049 is out of the 12-bit signed range"):
        di.split_k([0, -2049], 12, 8)
    with pytest.raises(ValueError, match=r"lsb\[0\] = 16 is out of the 4-bit unsigned range"):
        di.merge_k([0], [16], 4)
    with pytest.raises(ValueError, match="one shape"):
        di.merge_k([0, 1], [0], 4)
    with pytest.raises(ValueError, match="fill must be 'mid' or 'zero'"):
        di.msb_estimate([0], 4, "half")
    with pytest.raises(ValueError, match=r"msb\[0\] = 128 is out of the 8-bit signed range"):
        di.msb_estimate([128], 4, width=12)


# --------------------------------------------------------------------------------------------
# Run requests
# --------------------------------------------------------------------------------------------

R = di.Request


def test_run_requests_straddling_rows():
    # d = 32 at 6 bits: 24-byte rows, so odd rows start 8 bytes into a 16-byte beat.
    p = di.PlaneLayout(base=4096, rows=1024, row_bytes=24, elem_bits=6, signed=True)
    assert p.d == 32 and p.row_addr(1) == 4120 and p.end == 4096 + 24576
    assert p.run_requests(0, 1, 16, 4) == ([R(4096, 2)], 0, 24)
    assert p.run_requests(1, 1, 16, 4) == ([R(4112, 2)], 8, 24)
    assert p.run_requests(2, 1, 16, 4) == ([R(4144, 2)], 0, 24)
    assert p.run_requests(1023, 1, 16, 4) == ([R(28640, 2)], 8, 24)
    # rows 1..3 = bytes 4120..4191: beats 4112..4191, 5 beats, split by max_burst = 2
    run = p.run_requests(1, 3, 16, 2)
    assert run == ([R(4112, 2), R(4144, 2), R(4176, 1)], 8, 72)
    assert run.beats == 5
    # rows 0..7 = 192 bytes = 12 beats: three full bursts of 4
    assert p.run_requests(0, 8, 16, 4).requests == [R(4096, 4), R(4160, 4), R(4224, 4)]
    # 32-byte beats: row 1 starts 24 bytes into the beat at 4096
    assert p.run_requests(1, 1, 32, 4) == ([R(4096, 2)], 24, 24)
    # the full plane: 24576 bytes = 1536 beats = 96 bursts of 16
    full = p.run_requests(0, 1024, 16, 16)
    assert full.skip == 0 and full.length == 24576 and full.beats == 1536
    assert full.requests == [R(4096 + 256 * i, 16) for i in range(96)]
    assert p.run_requests(5, 0) == ([], 0, 0)


def test_run_requests_errors():
    p = di.PlaneLayout(base=4096, rows=10, row_bytes=24, elem_bits=6, signed=True)
    with pytest.raises(ValueError, match=r"count must be in \[0, 2\], not 3"):
        p.run_requests(8, 3)
    with pytest.raises(ValueError, match=r"start must be in \[0, 10\], not 11"):
        p.run_requests(11, 0)
    with pytest.raises(ValueError, match="beat_bytes must be a power of two"):
        p.run_requests(0, 1, 24, 4)
    with pytest.raises(ValueError, match=r"max_burst must be >= 1, not 0"):
        p.run_requests(0, 1, 16, 0)
    with pytest.raises(ValueError, match="not aligned to the 16-byte beat"):
        di.PlaneLayout(base=8, rows=10, row_bytes=24, elem_bits=6, signed=True).run_requests(0, 1)
    with pytest.raises(ValueError, match=r"row must be in \[0, 9\], not 10"):
        p.row_addr(10)
    with pytest.raises(ValueError, match="whole number of 12-bit elements"):
        di.PlaneLayout(base=0, rows=10, row_bytes=5, elem_bits=12, signed=True)


def test_coalesce():
    assert di.coalesce([]) == []
    assert di.coalesce(np.array([], dtype=np.int64)) == []
    assert di.coalesce([7]) == [(7, 1)]
    assert di.coalesce(range(3, 13)) == [(3, 10)]
    assert di.coalesce([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 1), (9, 2)]
    assert di.coalesce([0, 2, 4]) == [(0, 1), (2, 1), (4, 1)]
    assert di.coalesce(np.arange(1024)) == [(0, 1024)]
    for bad, msg in (([3, 2], r"indices\[0\] = 3, indices\[1\] = 2 \(not ascending\)"),
                     ([1, 4, 4], r"indices\[1\] = 4, indices\[2\] = 4 \(repeated\)"),
                     ([-1, 0], "non-negative"),
                     ([[0, 1]], "one-dimensional")):
        with pytest.raises(ValueError, match=msg):
            di.coalesce(bad)
    with pytest.raises(TypeError, match="integers"):
        di.coalesce([0.0, 1.0])


def test_requests_for_hand_worked():
    p = di.PlaneLayout(base=4096, rows=1024, row_bytes=24, elem_bits=6, signed=True)
    # runs (0, 3), (5, 1), (9, 2): bytes 4096..4167, 4216..4239, 4312..4359
    idx = [0, 1, 2, 5, 9, 10]
    assert di.requests_for(p, idx) == [R(4096, 5), R(4208, 2), R(4304, 4)]
    assert di.bytes_for(p, idx) == 11 * 16
    assert [r.skip for r in di.fetch_runs(p, idx)] == [0, 8, 8]
    assert di.requests_for(p, idx, 16, 2) == [R(4096, 2), R(4128, 2), R(4160, 1), R(4208, 2),
                                              R(4304, 2), R(4336, 2)]
    assert di.bytes_for(p, idx, 16, 2) == 11 * 16
    assert di.requests_for(p, []) == [] and di.bytes_for(p, []) == 0
    assert di.bytes_for(p, range(1024)) == 24576
    # Two runs in one beat (4-byte rows): the beat is read once per run.
    small = di.PlaneLayout(base=0, rows=8, row_bytes=4, elem_bits=4, signed=True)
    assert di.requests_for(small, [0, 2]) == [R(0, 1), R(0, 1)]
    assert di.bytes_for(small, [0, 2]) == 32


def test_requests_cover_rows_random():
    """Every requested range is B-aligned, the minimal cover of its run, bursts <= max_burst."""
    rng = np.random.default_rng(pick_seed())
    for _ in range(200):
        d = int(rng.choice([8, 16, 32, 64]))
        bits = int(rng.integers(1, 13))
        beat = int(rng.choice([4, 8, 16, 32, 64]))
        burst = int(rng.integers(1, 9))
        rows = int(rng.integers(1, 80))
        p = di.PlaneLayout(base=beat * int(rng.integers(0, 100)), rows=rows,
                           row_bytes=d * bits // 8, elem_bits=bits, signed=False)
        idx = np.flatnonzero(rng.random(rows) < rng.random())
        runs = di.fetch_runs(p, idx, beat, burst)
        assert len(runs) == len(di.coalesce(idx))
        total = 0
        for (start, count), run in zip(di.coalesce(idx), runs, strict=True):
            first = p.row_addr(start)
            stop = first + count * p.row_bytes
            addr = run.requests[0].addr
            assert addr % beat == 0 and first - addr == run.skip < beat
            for r in run.requests:
                assert r.addr == addr and 1 <= r.beats <= burst
                addr += r.beats * beat
            assert all(r.beats == burst for r in run.requests[:-1])
            assert stop <= addr < stop + beat and run.length == count * p.row_bytes
            total += run.beats * beat
        assert di.bytes_for(p, idx, beat, burst) == total
        assert di.requests_for(p, idx, beat, burst) == [r for run in runs for r in run.requests]


# --------------------------------------------------------------------------------------------
# Image layout
# --------------------------------------------------------------------------------------------

def test_layout_hand_worked():
    lay = di.ImageLayout(layers=1, kv_heads=1, q_heads=1, n_max=1024, m_max=1024, d=64)
    assert [(k, p.base, p.size, p.row_bytes, p.elem_bits, p.signed)
            for k, _, _, p in lay.planes()] == [
        ("k_msb", 0, 65536, 64, 8, True), ("k_lsb", 65536, 32768, 32, 4, False),
        ("v", 98304, 98304, 96, 12, True), ("q", 196608, 98304, 96, 12, True)]
    assert lay.size == 294912

    # 6 + 6 split, d = 8: every plane is smaller than 4096, so each takes one 4 KB slot
    lay = di.ImageLayout(layers=2, kv_heads=1, q_heads=2, n_max=100, m_max=10, d=8, msb_bits=6)
    assert lay.layer_bytes == 5 * 4096 and lay.size == 10 * 4096
    assert lay.head_group(1, 0) == di.HeadGroupLayout(
        1, 0, di.PlaneLayout(20480, 100, 6, 6, True), di.PlaneLayout(24576, 100, 6, 6, False),
        di.PlaneLayout(28672, 100, 12, 12, True))
    assert lay.q_plane(1, 1) == di.PlaneLayout(36864, 10, 12, 12, True)
    assert lay.plane("q", 0, 0).base == 12288

    # align = B: planes pack at 16-byte granularity
    lay = di.ImageLayout(layers=1, kv_heads=1, q_heads=1, n_max=3, m_max=1, d=8, msb_bits=4,
                         align=16)
    assert [p.base for *_, p in lay.planes()] == [0, 16, 48, 96] and lay.size == 112


def test_layout_order_random():
    rng = np.random.default_rng(pick_seed())
    for _ in range(30):
        kv = int(rng.integers(1, 4))
        lay = di.ImageLayout(layers=int(rng.integers(1, 4)), kv_heads=kv,
                             q_heads=kv * int(rng.integers(1, 4)), n_max=int(rng.integers(1, 300)),
                             m_max=int(rng.integers(1, 300)), d=int(rng.choice([8, 16, 32, 64])),
                             msb_bits=int(rng.integers(1, 12)), align=int(rng.choice([16, 4096])))
        planes = lay.planes()
        assert len(planes) == lay.layers * (3 * lay.kv_heads + lay.q_heads)
        end = 0
        for kind, layer, head, p in planes:
            assert p.base % lay.align == 0 and p.base == -(-end // lay.align) * lay.align
            assert p == lay.plane(kind, layer, head)
            end = p.end
        assert lay.size == -(-end // lay.align) * lay.align


def test_from_config():
    lay = di.ImageLayout.from_config(preset("default"), layers=2, kv_heads=4, q_heads=4, d=64)
    assert (lay.width, lay.d_max, lay.n_max, lay.m_max, lay.msb_bits) == (12, 64, 1024, 1024, 8)
    small = preset("small").attention
    lay = di.ImageLayout.from_config(small, layers=1, kv_heads=1, q_heads=1, d=8, m_max=1,
                                     msb_bits=6)
    assert (lay.d_max, lay.n_max, lay.m_max, lay.msb_bits) == (8, 128, 1, 6)
    with pytest.raises(ValueError, match=r"d must be in \[8, 8\], not 16"):
        di.ImageLayout.from_config(small, layers=1, kv_heads=1, q_heads=1, d=16)
    # a whole Config brings its memory side's plane format; keywords still win
    cfg = preset("default").replace(mem_msb_bits=6, mem_align=256, mem_beat_bytes=32)
    lay = di.ImageLayout.from_config(cfg, layers=1, kv_heads=1, q_heads=1, d=16)
    assert (lay.msb_bits, lay.align, lay.beat_bytes) == (6, 256, 32)
    lay = di.ImageLayout.from_config(cfg, layers=1, kv_heads=1, q_heads=1, d=16, msb_bits=8)
    assert (lay.msb_bits, lay.align) == (8, 256)


@pytest.mark.parametrize("changes, exc, msg", [
    (dict(d=48), ValueError, r"d must be a power of two in \[8, 64\], not 48"),
    (dict(d=4), ValueError, r"d must be in \[8, 64\], not 4"),
    (dict(d=128), ValueError, r"d must be in \[8, 64\], not 128"),
    (dict(d=128, d_max=128), None, None),
    (dict(d_max=96), ValueError, "d_max must be a power of two"),
    (dict(msb_bits=0), ValueError, r"msb_bits must be in \[1, 11\], not 0"),
    (dict(msb_bits=12), ValueError, r"msb_bits must be in \[1, 11\], not 12"),
    (dict(width=16, msb_bits=12), None, None),
    (dict(n_max=0), ValueError, "n_max must be >= 1, not 0"),
    (dict(m_max=0), ValueError, "m_max must be >= 1, not 0"),
    (dict(layers=0), ValueError, "layers must be >= 1, not 0"),
    (dict(q_heads=3), ValueError, r"q_heads \(3\) must be a multiple of kv_heads \(2\)"),
    (dict(align=100), ValueError, r"align \(100\) must be a multiple of beat_bytes \(16\)"),
    (dict(beat_bytes=12, align=120), ValueError, "beat_bytes must be a power of two"),
    (dict(n_max=2.0), TypeError, "n_max must be an integer, not 2.0"),
    (dict(kv_heads=True), TypeError, "kv_heads must be an integer"),
])
def test_bad_layouts(changes, exc, msg):
    args = dict(layers=1, kv_heads=2, q_heads=4, n_max=16, m_max=16, d=32)
    args.update(changes)
    if exc is None:
        di.ImageLayout(**args)
    else:
        with pytest.raises(exc, match=msg):
            di.ImageLayout(**args)


def test_layout_lookup_errors():
    lay = rand_layout(8, 8)
    with pytest.raises(ValueError, match="kind must be one of"):
        lay.plane("k", 0, 0)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\], not 2"):
        lay.head_group(2, 0)
    with pytest.raises(ValueError, match=r"kv head must be in \[0, 1\], not 2"):
        lay.plane("v", 0, 2)
    with pytest.raises(ValueError, match=r"q head must be in \[0, 3\], not 4"):
        lay.q_plane(0, 4)


def test_build_read_errors():
    lay = rand_layout(8, 8)
    k = np.zeros((2, 2, 4, 8), dtype=np.int64)
    q = np.zeros((2, 4, 3, 8), dtype=np.int64)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 2, 'n', 8\) with n <= 20"):
        di.build_image(lay, np.zeros((2, 2, 21, 8), dtype=np.int64), k, q)
    with pytest.raises(ValueError, match=r"q must have shape \(2, 4, 'n', 8\) with n <= 6"):
        di.build_image(lay, k, k, np.zeros((2, 4, 3, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="k and v must have one shape"):
        di.build_image(lay, k, np.zeros((2, 2, 5, 8), dtype=np.int64), q)
    bad = k.copy()
    bad[1, 0, 3, 7] = 2048
    with pytest.raises(ValueError, match=r"v\[1, 0, 3, 7\] = 2048 is out of the 12-bit signed"):
        di.build_image(lay, k, bad, q)
    bad = q.copy()
    bad[0, 3, 2, 1] = -2049
    with pytest.raises(ValueError, match=r"q\[0, 3, 2, 1\] = -2049"):
        di.build_image(lay, k, k, bad)
    image = di.build_image(lay, k, k, q)
    with pytest.raises(ValueError, match=f"must be {lay.size} bytes, not {lay.size - 1}"):
        di.read_image(lay, image[:-1])
    with pytest.raises(ValueError, match=r"n must be in \[0, 20\], not 21"):
        di.read_image(lay, image, n=21)


def test_buffer_runs():
    assert di.buffer_runs([]) == []
    assert di.buffer_runs([3, 4, 5, 9, 11, 12], first=32) == [
        {"start": 3, "count": 3, "dst": 32}, {"start": 9, "count": 1, "dst": 35},
        {"start": 11, "count": 2, "dst": 36}]
    with pytest.raises(ValueError, match="strictly ascending"):
        di.buffer_runs([4, 4])
