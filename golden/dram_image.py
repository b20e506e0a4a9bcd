"""The host-side DRAM image of SpAtten's memory side: how K, V and Q sit in DRAM, and which beats
a fetch of some rows reads.

Element format
--------------
K, V and Q are signed ``width``-bit integers (``AttentionConfig.data_width``). For
progressive quantization K is split into two bit planes, ``lsb_bits = width - msb_bits``::

    msb = k >> lsb_bits                (arithmetic shift: signed msb_bits-bit integer)
    lsb = k & (2**lsb_bits - 1)        (unsigned lsb_bits-bit integer)
    k   = (msb << lsb_bits) | lsb      (merge_k)

When only the MSBs are fetched the datapath uses ``msb_estimate`` in place of k.

Row packing (`pack_rows`)
-------------------------
An (n, d) array of ``bits``-bit elements is a dense bit string: element (r, j) occupies bits
``[(r*d + j) * bits, (r*d + j + 1) * bits)``, bit 0 being the LSB of byte 0 (little-endian bit
and byte order), two's complement when signed. Rows follow each other with no padding, so a row
is ``d * bits / 8`` bytes (d is a multiple of 8, so this is whole bytes) and may straddle beats.

Image order (`ImageLayout`)
---------------------------
Addresses are byte offsets from the start of the image (place the image at a multiple of
``align`` in DRAM). Planes come in this order::

    for layer in range(layers):
        for g in range(kv_heads):               # head group g (one K/V head)
            K_MSB(layer, g)   n_max rows of d x msb_bits      (signed)
            K_LSB(layer, g)   n_max rows of d x lsb_bits      (unsigned)
            V(layer, g)       n_max rows of d x width         (signed)
        for h in range(q_heads):                # query head h uses head group h // group_size
            Q(layer, h)       m_max rows of d x width         (signed)

Each plane starts at the first multiple of ``align`` at or after the end of the one before (the
first at 0), so every plane occupies ``ceil(rows * row_bytes / align) * align`` bytes; the image
size is the end of the last plane rounded up to ``align``. group_size = q_heads // kv_heads.
Bytes that belong to no stored row (rows n..n_max-1, padding) are zero.

Fetching (`PlaneLayout.run_requests`, `requests_for`)
-----------------------------------------------------
DRAM is read in beats of B bytes from B-aligned addresses. A run of consecutive rows is read as
the smallest B-aligned beat range that covers it, cut into requests of at most ``max_burst``
beats; the fetch unit's gearbox drops ``skip`` bytes of the first beat, keeps ``length`` bytes
and drops the rest of the last beat. A list of rows is coalesced into runs first; each run is
fetched on its own, so two runs that touch the same beat read it twice (`bytes_for` counts it
twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from spatten.config import DEFAULT, AttentionConfig, Config

__all__ = [
    "split_k", "merge_k", "msb_estimate", "pack_rows", "unpack_rows", "Request", "RunFetch",
    "PlaneLayout", "coalesce", "HeadGroupLayout", "ImageLayout", "ImageContents", "build_image",
    "read_image", "buffer_runs", "fetch_runs", "requests_for", "bytes_for", "PLANE_KINDS",
]

#: Plane kinds, in their order inside a head group (Q planes follow a layer's head groups).
PLANE_KINDS = ("k_msb", "k_lsb", "v", "q")

_MAX_BITS = 32

# the defaults of every keyword below: the default configuration's (no copies of its numbers)
_WIDTH = DEFAULT.attention.data_width
_MEM = DEFAULT.memory


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {allowed}, not {value}")
    return value


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _int_array(name: str, a) -> np.ndarray:
    """``a`` as an int64 array; TypeError for anything that is not integers."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
            return arr.astype(np.int64)
        raise TypeError(f"{name} must hold integers, not {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values beyond int64")
    return arr.astype(np.int64, copy=False)


def _value_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_range(name: str, a: np.ndarray, bits: int, signed: bool) -> None:
    """ValueError naming the first element of ``a`` outside the ``bits``-bit range."""
    lo, hi = _value_range(bits, signed)
    bad = (a < lo) | (a > hi)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"{name}{list(where)} = {int(a[where])} is out of the {bits}-bit {kind} "
                         f"range [{lo}, {hi}] ({int(bad.sum())} value(s) out of range)")


def _check_split(width, msb_bits) -> tuple[int, int]:
    width = _check_int("width", width, 2, _MAX_BITS)
    msb_bits = _check_int("msb_bits", msb_bits, 1, width - 1)
    return width, width - msb_bits


# --------------------------------------------------------------------------------------------
# K bit planes
# --------------------------------------------------------------------------------------------

def split_k(k, width: int = _WIDTH, msb_bits: int = _MEM.msb_bits) -> tuple[np.ndarray, np.ndarray]:
    """Split signed ``width``-bit K values (any shape) into ``(msb, lsb)``, int64 arrays of k's
    shape: ``msb = k >> lsb_bits`` (arithmetic; signed ``msb_bits`` bits) and
    ``lsb = k & (2**lsb_bits - 1)`` (unsigned ``lsb_bits = width - msb_bits`` bits).
    ``msb_bits`` is in ``1..width-1``; a value outside the signed width range is a ValueError."""
    _, lsb_bits = _check_split(width, msb_bits)
    k = _int_array("k", k)
    _check_range("k", k, width, True)
    return k >> lsb_bits, k & ((1 << lsb_bits) - 1)


def merge_k(msb, lsb, lsb_bits: int) -> np.ndarray:
    """The inverse of `split_k`: ``(msb << lsb_bits) | lsb`` as int64, for arrays of one shape.
    ``lsb`` must be in ``[0, 2**lsb_bits)``."""
    lsb_bits = _check_int("lsb_bits", lsb_bits, 1, _MAX_BITS - 1)
    msb = _int_array("msb", msb)
    lsb = _int_array("lsb", lsb)
    if msb.shape != lsb.shape:
        raise ValueError(f"msb and lsb must have one shape, not {msb.shape} and {lsb.shape}")
    _check_range("lsb", lsb, lsb_bits, False)
    return (msb << lsb_bits) | lsb


def msb_estimate(msb, lsb_bits: int, fill: str = "mid", width: int | None = None) -> np.ndarray:
    """The full-width value the datapath uses for K when only its MSBs are known (int64, msb's
    shape):

    - ``fill="mid"``:  ``(msb << lsb_bits) + 2**(lsb_bits-1)``, the middle of the dropped range
      (error ``k - estimate`` in ``[-2**(lsb_bits-1), 2**(lsb_bits-1) - 1]``);
    - ``fill="zero"``: ``msb << lsb_bits`` (error in ``[0, 2**lsb_bits - 1]``).

    For a signed ``(width - lsb_bits)``-bit msb both stay inside the signed ``width`` range
    (the "mid" estimate spans
    ``[-2**(width-1) + 2**(lsb_bits-1), 2**(width-1) - 2**(lsb_bits-1)]``).
    With ``width`` given, msb is checked against that range first."""
    lsb_bits = _check_int("lsb_bits", lsb_bits, 1, _MAX_BITS - 1)
    if fill not in ("mid", "zero"):
        raise ValueError(f"fill must be 'mid' or 'zero', not {fill!r}")
    msb = _int_array("msb", msb)
    if width is not None:
        width = _check_int("width", width, lsb_bits + 1, _MAX_BITS)
        _check_range("msb", msb, width - lsb_bits, True)
    est = msb << lsb_bits
    if fill == "mid":
        est = est + (1 << (lsb_bits - 1))
    return est


# --------------------------------------------------------------------------------------------
# Dense bit packing
# --------------------------------------------------------------------------------------------

def _check_row_bits(d: int, bits: int) -> None:
    if (d * bits) % 8:
        raise ValueError(f"a row of d={d} elements of {bits} bits is {d * bits} bits, not a whole "
                         f"number of bytes (make d a multiple of 8)")


def pack_rows(a, bits: int, signed: bool = True, name: str = "a") -> bytes:
    """Pack an (n, d) integer array into ``n * d * bits / 8`` bytes: element (r, j) occupies
    bits ``[(r*d + j) * bits, +bits)``, bit 0 = LSB of byte 0, two's complement when ``signed``;
    rows back to back. ValueError if ``d * bits`` is not a multiple of 8 or a value is outside
    the ``bits``-bit range (the message names the element; ``name`` names the array)."""
    bits = _check_int("bits", bits, 1, _MAX_BITS)
    a = _int_array(name, a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, not shape {a.shape}")
    n, d = a.shape
    _check_row_bits(d, bits)
    _check_range(name, a, bits, signed)
    u = (a & ((1 << bits) - 1)).reshape(-1)
    planes = ((u[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_rows(buf, n: int, d: int, bits: int, signed: bool = True) -> np.ndarray:
    """The inverse of `pack_rows`: an (n, d) int64 array from exactly ``n * d * bits / 8``
    bytes (any bytes-like object or uint8 array)."""
    n = _check_int("n", n, 0)
    d = _check_int("d", d, 1)
    bits = _check_int("bits", bits, 1, _MAX_BITS)
    _check_row_bits(d, bits)
    raw = np.frombuffer(bytes(buf), dtype=np.uint8)
    need = n * d * bits // 8
    if raw.size != need:
        raise ValueError(f"{n} rows of {d} x {bits} bits are {need} bytes, not {raw.size}")
    if n == 0:
        return np.zeros((0, d), dtype=np.int64)
    planes = np.unpackbits(raw, bitorder="little").reshape(n * d, bits).astype(np.int64)
    vals = (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)
    if signed:
        vals -= (vals >> (bits - 1)) << bits
    return vals.reshape(n, d)


# --------------------------------------------------------------------------------------------
# Planes and fetch requests
# --------------------------------------------------------------------------------------------

class Request(NamedTuple):
    """One DRAM read: ``beats`` beats of B bytes from the B-aligned byte address ``addr``."""

    addr: int
    beats: int


class RunFetch(NamedTuple):
    """How to fetch one run of consecutive rows.

    requests  the reads, in address order; all but the last exactly max_burst beats
    skip      bytes of the first beat before the run's first row (the gearbox drops them)
    length    bytes of the run (count x row_bytes), kept after the skip; the rest of the last
              beat is dropped
    """

    requests: list
    skip: int
    length: int

    @property
    def beats(self) -> int:
        """Beats read in all."""
        return sum(r.beats for r in self.requests)


@dataclass(frozen=True)
class PlaneLayout:
    """One plane in DRAM: ``rows`` rows of ``row_bytes`` bytes each, back to back from byte
    ``base``, each row ``d = row_bytes * 8 / elem_bits`` elements packed as in `pack_rows`
    (two's complement when ``signed``). ``base`` must be aligned to the beat size of the fetches
    (checked by `run_requests`)."""

    base: int
    rows: int
    row_bytes: int
    elem_bits: int
    signed: bool

    def __post_init__(self):
        _check_int("base", self.base, 0)
        _check_int("rows", self.rows, 1)
        _check_int("row_bytes", self.row_bytes, 1)
        _check_int("elem_bits", self.elem_bits, 1, _MAX_BITS)
        if (self.row_bytes * 8) % self.elem_bits:
            raise ValueError(f"row_bytes ({self.row_bytes}) is not a whole number of "
                             f"{self.elem_bits}-bit elements")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool, not {self.signed!r}")

    @property
    def d(self) -> int:
        """Elements per row."""
        return self.row_bytes * 8 // self.elem_bits

    @property
    def size(self) -> int:
        """Bytes of the plane: rows x row_bytes."""
        return self.rows * self.row_bytes

    @property
    def end(self) -> int:
        """First byte after the plane."""
        return self.base + self.size

    def row_addr(self, r: int) -> int:
        """Byte address of row ``r`` (0 <= r < rows)."""
        r = _check_int("row", r, 0, self.rows - 1)
        return self.base + r * self.row_bytes

    def run_requests(self, start: int, count: int, beat_bytes: int = _MEM.beat_bytes,
                     max_burst: int = _MEM.max_burst) -> RunFetch:
        """The fetch of rows ``start .. start+count-1``: the B-aligned beat range covering
        bytes ``[base + start*row_bytes, base + (start+count)*row_bytes)`` cut into requests of
        at most ``max_burst`` beats (all but the last exactly ``max_burst``), with the byte
        offset of row ``start`` in the first beat as ``skip``. ``count = 0`` gives no requests.
        ``beat_bytes`` (B) is a power of two dividing ``base``."""
        beat_bytes = _check_beat_bytes(beat_bytes)
        max_burst = _check_int("max_burst", max_burst, 1)
        if self.base % beat_bytes:
            raise ValueError(f"plane base {self.base:#x} is not aligned to the {beat_bytes}-byte "
                             f"beat")
        start = _check_int("start", start, 0, self.rows)
        count = _check_int("count", count, 0, self.rows - start)
        if count == 0:
            return RunFetch([], 0, 0)
        first = self.base + start * self.row_bytes
        stop = first + count * self.row_bytes
        lo = first - first % beat_bytes
        beats = -(-(stop - lo) // beat_bytes)
        reqs = [Request(lo + b * beat_bytes, min(max_burst, beats - b))
                for b in range(0, beats, max_burst)]
        return RunFetch(reqs, first - lo, count * self.row_bytes)


def _check_beat_bytes(beat_bytes) -> int:
    beat_bytes = _check_int("beat_bytes", beat_bytes, 1)
    if not _is_pow2(beat_bytes):
        raise ValueError(f"beat_bytes must be a power of two, not {beat_bytes}")
    return beat_bytes


def coalesce(indices) -> list[tuple[int, int]]:
    """Runs ``(start, count)`` of consecutive values, in order, from a strictly ascending list of
    non-negative row indices (a sequence or 1-D integer array). ``[]`` gives ``[]``. ValueError
    for unsorted, repeated or negative indices."""
    idx = _int_array("indices", indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, not shape {idx.shape}")
    if idx.size == 0:
        return []
    if idx[0] < 0:
        raise ValueError(f"indices must be non-negative; indices[0] = {int(idx[0])}")
    step = np.diff(idx)
    if (step <= 0).any():
        i = int(np.argmax(step <= 0))
        what = "repeated" if step[i] == 0 else "not ascending"
        raise ValueError(f"indices must be strictly ascending: indices[{i}] = {int(idx[i])}, "
                         f"indices[{i + 1}] = {int(idx[i + 1])} ({what})")
    breaks = np.flatnonzero(step != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [idx.size]))
    return [(int(idx[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def buffer_runs(indices, first: int = 0) -> list[dict]:
    """The runs ``{start, count, dst}`` (`hw.memory.fetch.run_layout`) that bring rows ``indices``
    (strictly ascending) to buffer positions ``first, first + 1, ...``: `coalesce` with each
    run's first position; what the core's coalescers ask a plane reader for."""
    out, dst = [], first
    for start, count in coalesce(indices):
        out.append({"start": start, "count": count, "dst": dst})
        dst += count
    return out


def fetch_runs(plane: PlaneLayout, indices, beat_bytes: int = _MEM.beat_bytes,
               max_burst: int = _MEM.max_burst) -> list[RunFetch]:
    """`PlaneLayout.run_requests` for each run of `coalesce(indices)`, in order."""
    return [plane.run_requests(s, c, beat_bytes, max_burst) for s, c in coalesce(indices)]


def requests_for(plane: PlaneLayout, indices, beat_bytes: int = _MEM.beat_bytes,
                 max_burst: int = _MEM.max_burst) -> list[Request]:
    """The DRAM reads that fetch rows ``indices`` (strictly ascending) of ``plane``: the
    requests of every coalesced run, concatenated in order."""
    return [r for run in fetch_runs(plane, indices, beat_bytes, max_burst) for r in run.requests]


def bytes_for(plane: PlaneLayout, indices, beat_bytes: int = _MEM.beat_bytes,
              max_burst: int = _MEM.max_burst) -> int:
    """Bytes read from DRAM to fetch rows ``indices``: beats x B over `requests_for` (a beat
    shared by two runs counts twice)."""
    return beat_bytes * sum(r.beats for r in requests_for(plane, indices, beat_bytes, max_burst))


# --------------------------------------------------------------------------------------------
# The whole image
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadGroupLayout:
    """The three planes of one (layer, kv head) head group."""

    layer: int
    group: int
    k_msb: PlaneLayout
    k_lsb: PlaneLayout
    v: PlaneLayout


@dataclass(frozen=True, kw_only=True)
class ImageLayout:
    """Where every plane of a model's K, V and Q sits in the image (order and alignment in the
    module docstring).

    layers      layers stored (>= 1)
    kv_heads    K/V heads (head groups) per layer (>= 1)
    q_heads     query heads per layer, a multiple of kv_heads (query head h uses head group
                h // (q_heads // kv_heads))
    n_max       rows of each K and V plane (keys per head, >= 1)
    m_max       rows of each Q plane (queries per head, >= 1)
    d           head dimension: a power of two in [8, d_max]
    width       bits of K, V and Q elements (2..32; the datapath's data_width)
    msb_bits    bits of the K MSB plane, 1..width-1 (the LSB plane holds width - msb_bits)
    beat_bytes  B, bytes of a DRAM beat (a power of two)
    align       every plane's base is a multiple of this (a multiple of beat_bytes)
    d_max       the largest head dimension the datapath accepts (a power of two >= 8)

    The defaults are the default configuration's (`spatten.config.DEFAULT`); `from_config`
    takes them from a given one.
    """

    layers: int
    kv_heads: int
    q_heads: int
    n_max: int
    m_max: int
    d: int
    width: int = _WIDTH
    msb_bits: int = _MEM.msb_bits
    beat_bytes: int = _MEM.beat_bytes
    align: int = _MEM.align
    d_max: int = max(DEFAULT.attention.head_dims)

    def __post_init__(self):
        _check_int("layers", self.layers, 1)
        _check_int("kv_heads", self.kv_heads, 1)
        _check_int("q_heads", self.q_heads, 1)
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads ({self.q_heads}) must be a multiple of kv_heads "
                             f"({self.kv_heads})")
        _check_int("n_max", self.n_max, 1)
        _check_int("m_max", self.m_max, 1)
        _check_int("d_max", self.d_max, 8)
        if not _is_pow2(self.d_max):
            raise ValueError(f"d_max must be a power of two >= 8, not {self.d_max}")
        _check_int("d", self.d, 8, self.d_max)
        if not _is_pow2(self.d):
            raise ValueError(f"d must be a power of two in [8, {self.d_max}], not {self.d}")
        _check_split(self.width, self.msb_bits)
        _check_beat_bytes(self.beat_bytes)
        _check_int("align", self.align, 1)
        if self.align % self.beat_bytes:
            raise ValueError(f"align ({self.align}) must be a multiple of beat_bytes "
                             f"({self.beat_bytes})")

    @classmethod
    def from_config(cls, cfg: Config | AttentionConfig, *, layers: int, kv_heads: int,
                    q_heads: int, d: int, n_max: int | None = None, m_max: int | None = None,
                    **kwargs) -> "ImageLayout":
        """A layout for the datapath of ``cfg``: width = data_width, d_max = its largest head
        dimension, n_max = its capacity unless given, m_max = n_max unless given; msb_bits,
        beat_bytes and align are the memory side's of a `Config` (the class defaults for an
        `AttentionConfig`) unless given."""
        att = cfg.attention if isinstance(cfg, Config) else cfg
        if not isinstance(att, AttentionConfig):
            raise TypeError(f"cfg must be a Config or AttentionConfig, not {cfg!r}")
        if isinstance(cfg, Config):
            mem = cfg.memory
            kwargs = {"msb_bits": mem.msb_bits, "beat_bytes": mem.beat_bytes, "align": mem.align,
                      **kwargs}
        n_max = att.capacity if n_max is None else n_max
        m_max = n_max if m_max is None else m_max
        return cls(layers=layers, kv_heads=kv_heads, q_heads=q_heads, n_max=n_max, m_max=m_max,
                   d=d, width=att.data_width, d_max=max(att.head_dims), **kwargs)

    # --- sizes ---
    @property
    def lsb_bits(self) -> int:
        return self.width - self.msb_bits

    @property
    def group_size(self) -> int:
        """Query heads per head group."""
        return self.q_heads // self.kv_heads

    def _slot(self, rows: int, bits: int) -> int:
        size = rows * self.d * bits // 8
        return -(-size // self.align) * self.align

    @property
    def _slots(self) -> dict:
        return {"k_msb": self._slot(self.n_max, self.msb_bits),
                "k_lsb": self._slot(self.n_max, self.lsb_bits),
                "v": self._slot(self.n_max, self.width),
                "q": self._slot(self.m_max, self.width)}

    @property
    def layer_bytes(self) -> int:
        """Bytes (with padding) of one layer's planes; layer l starts at l x layer_bytes."""
        s = self._slots
        return self.kv_heads * (s["k_msb"] + s["k_lsb"] + s["v"]) + self.q_heads * s["q"]

    @property
    def size(self) -> int:
        """Bytes of the whole image (a multiple of align)."""
        return self.layers * self.layer_bytes

    # --- planes ---
    def plane(self, kind: str, layer: int, head: int) -> PlaneLayout:
        """The plane ``kind`` ("k_msb", "k_lsb", "v": head is the kv head; "q": head is the
        query head) of ``layer``."""
        if kind not in PLANE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PLANE_KINDS)}, not {kind!r}")
        layer = _check_int("layer", layer, 0, self.layers - 1)
        s = self._slots
        base = layer * self.layer_bytes
        if kind == "q":
            head = _check_int("q head", head, 0, self.q_heads - 1)
            base += self.kv_heads * (s["k_msb"] + s["k_lsb"] + s["v"]) + head * s["q"]
            return PlaneLayout(base, self.m_max, self.d * self.width // 8, self.width, True)
        head = _check_int("kv head", head, 0, self.kv_heads - 1)
        base += head * (s["k_msb"] + s["k_lsb"] + s["v"])
        bits, signed = {"k_msb": (self.msb_bits, True), "k_lsb": (self.lsb_bits, False),
                        "v": (self.width, True)}[kind]
        if kind in ("k_lsb", "v"):
            base += s["k_msb"]
        if kind == "v":
            base += s["k_lsb"]
        return PlaneLayout(base, self.n_max, self.d * bits // 8, bits, signed)

    def head_group(self, layer: int, group: int) -> HeadGroupLayout:
        """The K MSB, K LSB and V planes of kv head ``group`` of ``layer``."""
        return HeadGroupLayout(layer, group, self.plane("k_msb", layer, group),
                               self.plane("k_lsb", layer, group), self.plane("v", layer, group))

    def q_plane(self, layer: int, head: int) -> PlaneLayout:
        """The Q plane of query head ``head`` of ``layer``."""
        return self.plane("q", layer, head)

    def planes(self) -> list[tuple[str, int, int, PlaneLayout]]:
        """Every plane as ``(kind, layer, head, PlaneLayout)``, in image (address) order."""
        out = []
        for layer in range(self.layers):
            for g in range(self.kv_heads):
                out += [(kind, layer, g, self.plane(kind, layer, g))
                        for kind in ("k_msb", "k_lsb", "v")]
            out += [("q", layer, h, self.plane("q", layer, h)) for h in range(self.q_heads)]
        return out


@dataclass(frozen=True)
class ImageContents:
    """What `read_image` finds, all int64.

    k, k_msb, k_lsb, v   (layers, kv_heads, n, d); k is merged from its two planes
    q                    (layers, q_heads, m, d)
    """

    k: np.ndarray
    k_msb: np.ndarray
    k_lsb: np.ndarray
    v: np.ndarray
    q: np.ndarray


def _check_tensor(name: str, a, lead: tuple, rows_max: int, d: int) -> np.ndarray:
    a = _int_array(name, a)
    if a.ndim != 4 or a.shape[:2] != lead or a.shape[3] != d or a.shape[2] > rows_max:
        raise ValueError(f"{name} must have shape {lead + ('n', d)} with n <= {rows_max}, "
                         f"not {a.shape}")
    return a


def build_image(layout: ImageLayout, k, v, q) -> bytes:
    """The DRAM image (``layout.size`` bytes) holding ``k`` and ``v`` (layers, kv_heads, n, d)
    with n <= n_max, and ``q`` (layers, q_heads, m, d) with m <= m_max, all signed ``width``-bit
    integers; rows n.. (m..) and padding are zero. A value out of range is a ValueError naming
    the tensor and its position."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    kv_lead = (layout.layers, layout.kv_heads)
    k = _check_tensor("k", k, kv_lead, layout.n_max, layout.d)
    v = _check_tensor("v", v, kv_lead, layout.n_max, layout.d)
    q = _check_tensor("q", q, (layout.layers, layout.q_heads), layout.m_max, layout.d)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, not {k.shape} and {v.shape}")
    for name, t in (("k", k), ("v", v), ("q", q)):
        _check_range(name, t, layout.width, True)
    k_msb, k_lsb = split_k(k, layout.width, layout.msb_bits)
    image = np.zeros(layout.size, dtype=np.uint8)

    def put(plane: PlaneLayout, rows: np.ndarray, name: str) -> None:
        data = pack_rows(rows, plane.elem_bits, plane.signed, name)
        image[plane.base:plane.base + len(data)] = np.frombuffer(data, dtype=np.uint8)

    for layer in range(layout.layers):
        for g in range(layout.kv_heads):
            hg = layout.head_group(layer, g)
            put(hg.k_msb, k_msb[layer, g], f"k_msb[{layer}, {g}]")
            put(hg.k_lsb, k_lsb[layer, g], f"k_lsb[{layer}, {g}]")
            put(hg.v, v[layer, g], f"v[{layer}, {g}]")
        for h in range(layout.q_heads):
            put(layout.q_plane(layer, h), q[layer, h], f"q[{layer}, {h}]")
    return image.tobytes()


def read_image(layout: ImageLayout, image, n: int | None = None,
               m: int | None = None) -> ImageContents:
    """The first ``n`` (default n_max) K/V rows and ``m`` (default m_max) Q rows of every plane
    of ``image`` (exactly ``layout.size`` bytes), decoded."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    n = layout.n_max if n is None else _check_int("n", n, 0, layout.n_max)
    m = layout.m_max if m is None else _check_int("m", m, 0, layout.m_max)
    buf = bytes(image)
    if len(buf) != layout.size:
        raise ValueError(f"the image must be {layout.size} bytes, not {len(buf)}")
    L, G, H, d = layout.layers, layout.kv_heads, layout.q_heads, layout.d
    k_msb = np.zeros((L, G, n, d), dtype=np.int64)
    k_lsb = np.zeros_like(k_msb)
    v = np.zeros_like(k_msb)
    q = np.zeros((L, H, m, d), dtype=np.int64)

    def get(plane: PlaneLayout, rows: int) -> np.ndarray:
        data = buf[plane.base:plane.base + rows * plane.row_bytes]
        return unpack_rows(data, rows, plane.d, plane.elem_bits, plane.signed)

    for layer in range(L):
        for g in range(G):
            hg = layout.head_group(layer, g)
            k_msb[layer, g] = get(hg.k_msb, n)
            k_lsb[layer, g] = get(hg.k_lsb, n)
            v[layer, g] = get(hg.v, n)
        for h in range(H):
            q[layer, h] = get(layout.q_plane(layer, h), m)
    k = merge_k(k_msb, k_lsb, layout.lsb_bits)
    return ImageContents(k=k, k_msb=k_msb, k_lsb=k_lsb, v=v, q=q)
