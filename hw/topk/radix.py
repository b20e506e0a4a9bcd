"""The radix-select core shared by the top-k engine (`hw/topk/topk.py`) and value pruning's selector
(`hw/attention/value_select.py`).

Both find the k-th largest of n unsigned keys one D-bit digit at a time, from the top: a pass
over the candidates counts, for every bin b of the current digit, the candidates whose digit is
at least b; the bin holding the k-th largest key is the highest whose count reaches the number
of keys still to find; the next pass keeps the candidates in that bin. After the last digit the
k-th largest key (the threshold) is known, and so is how many keys equal to it are kept. An
output pass keeps every key above the threshold and the first such ties, lowest index first.

The blocks, in the order a key meets them (each a `wiring.Component`):

- `RunIntake`: checks and counts the beats of a run as they are taken (`RunError`).
- `RowReader`: reads a pass's rows of P keys from a buffer (issue, memory, register R1).
- `DigitHistogram`: 2**D - 1 popcounts of P flags a cycle: candidates with digit > j, minus
  the keys still to find.
- `BinSelect`: the bin holding the k-th largest key, from the signs of those counts.
- `ThresholdCompare`: output pass, stage 1: every key against the threshold.
- `TieBreaker` (with `TieCounter`, the tie bookkeeping): stages 2-3: keep flags, ties lowest
  index first.

The pass pipeline after R1 stalls as a whole: a stage component's ``i.ready`` is its
``o.ready`` (it moves when the unit's pipeline moves, bubbles included), which the unit drives
from the end of its pipeline.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.zero_elim import PrefixCount, check_lanes

__all__ = [
    "RunError", "INTAKE_LATENCY", "READER_LATENCY", "HISTOGRAM_LATENCY", "BIN_SELECT_LATENCY",
    "TIE_COUNTER_LATENCY", "COMPARE_LATENCY", "TIE_BREAK_LATENCY",
    "key_row_layout", "read_row_layout", "compare_layout", "compared_layout", "flagged_layout",
    "digit_flags_layout", "count_shape", "buffer_address",
    "RunIntake", "RowReader", "DigitHistogram", "BinSelect", "TieCounter", "ThresholdCompare",
    "TieBreaker",
]

#: `RunIntake`: its registered outputs show a beat taken in cycle t from t + 1.
INTAKE_LATENCY = 1
#: `RowReader`: a row read in cycle x (``addr``, ``read_en``) is on ``o`` from x + 2
#: (the memory's output register, then R1); a `start` in cycle s reads its first row in s + 1.
READER_LATENCY = 2
#: `DigitHistogram`: a beat taken in cycle t is in ``counts`` from t + 2.
HISTOGRAM_LATENCY = 2
#: `BinSelect`: ``go`` in cycle t gives ``valid`` and the chosen bin in t + 1.
BIN_SELECT_LATENCY = 1
#: `TieCounter`: ``cap`` follows ``set`` and ``take`` of cycle t from t + 1.
TIE_COUNTER_LATENCY = 1
#: `ThresholdCompare`: a row taken in cycle t is on ``o`` from t + 1 (one register).
COMPARE_LATENCY = 1
#: `TieBreaker`: a row taken in cycle t is on ``o`` from t + 2 (tie ranks, then keep flags).
TIE_BREAK_LATENCY = 2


class RunError(enum.Enum, shape=3):
    """What is wrong with a run (a packet of beats) of a radix-select unit. The top-k engine's
    `hw.topk.topk.ErrorCode` has the same codes at the same values, and one of its own."""
    NONE = 0
    N_ZERO = 1            # the run held no values
    N_OVER_CAPACITY = 2   # more values than the buffer holds
    K_OVER_N = 3          # k > n
    BAD_BEAT = 4          # count 0 or > lanes, or a partial beat that is not the last


_BEAT_CODES = ("NONE", "N_ZERO", "N_OVER_CAPACITY", "BAD_BEAT")


def _int_param(name, value, lo, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f"at least {lo}" if hi is None else f"from {lo} to {hi}"
        raise ValueError(f"{name} must be {allowed}, not {value}")
    return value


def _shape_param(name, value):
    try:
        Shape.cast(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be shape-castable (e.g. unsigned(16)), not {value!r}") \
            from exc
    return value


def buffer_address(row, row_bits: int, region):
    """The address of ``row`` in ``region`` of a memory whose regions are ``2**row_bits`` rows
    apart: ``Cat(row[:row_bits], zero padding, region)``."""
    row = Value.cast(row)
    return Cat(row[:row_bits], Const(0, row_bits - min(row_bits, len(row))), region)


def count_shape(capacity: int):
    """Shape of a histogram count: a count of candidates (0..capacity) minus the keys still to
    find (0..capacity), signed."""
    return signed(capacity.bit_length() + 1)


def key_row_layout(key_shape, lanes: int, rows: int) -> data.StructLayout:
    """A row of ``lanes`` keys: ``keys``, ``lane_ok`` (which lanes hold a key), ``row`` (its
    place: key j of row r has index r * lanes + j) and ``last`` (the last row of the pass)."""
    return data.StructLayout({
        "keys": data.ArrayLayout(key_shape, lanes),
        "lane_ok": lanes,
        "row": range(rows),
        "last": 1,
    })


def read_row_layout(key_shape, lanes: int, rows: int) -> data.StructLayout:
    """`RowReader`'s output: `key_row_layout` and ``injected`` (given on ``inject``, not read)."""
    return data.StructLayout({**key_row_layout(key_shape, lanes, rows).members, "injected": 1})


def compare_layout(key_shape, lanes: int, rows: int) -> data.StructLayout:
    """`ThresholdCompare`'s input: `key_row_layout` and a ``match`` flag per lane, carried
    through untouched (the top-k engine's candidate filter)."""
    return data.StructLayout({**key_row_layout(key_shape, lanes, rows).members, "match": lanes})


def compared_layout(key_shape, lanes: int, rows: int) -> data.StructLayout:
    """A row compared with the threshold: ``keys``, ``row``, ``last``, ``match`` and per lane
    ``greater`` (a key above the threshold) and ``equal`` (a key equal to it)."""
    return data.StructLayout({
        "keys": data.ArrayLayout(key_shape, lanes),
        "row": range(rows),
        "last": 1,
        "match": lanes,
        "greater": lanes,
        "equal": lanes,
    })


def flagged_layout(key_shape, lanes: int, rows: int) -> data.StructLayout:
    """A row with its keep flags: ``keys``, ``keep`` (one flag per lane), ``row``, ``last``."""
    return data.StructLayout({
        "keys": data.ArrayLayout(key_shape, lanes),
        "keep": lanes,
        "row": range(rows),
        "last": 1,
    })


def digit_flags_layout(lanes: int, digit_bits: int, restarts: bool = False) -> data.StructLayout:
    """`DigitHistogram`'s input: a digit per lane, a flag per lane (count this lane) and, with
    ``restarts``, ``restart`` (this beat starts a new count)."""
    return data.StructLayout({
        "digits": data.ArrayLayout(unsigned(digit_bits), lanes),
        "flags": lanes,
        **({"restart": 1} if restarts else {}),
    })


# ----------------------------------------------------------------------------------- intake


class RunIntake(wiring.Component):
    """Checks and counts the beats of a run as the unit takes them.

    A run is a packet of beats of up to ``lanes`` values: every beat but the last full
    (``count = lanes``), the last (``last``) with 1..lanes. The unit owns the handshake and shows
    each beat it takes on ``take``, ``count``, ``last``.

    Parameters (keyword-only)
    -------------------------
    lanes : int, 1..32        values a beat holds
    beats : int, >= 1         the most beats a run may hold (the buffer's depth)
    capacity : int, >= 1      the most values a run may hold
    errors : enum             the unit's error codes: `RunError` (default) or an Amaranth enum
                              with its members NONE, N_ZERO, N_OVER_CAPACITY, BAD_BEAT at the
                              same values (the top-k engine's `ErrorCode`)
    params : shape-castable or None   the run's parameters (k, a mode), sampled with its first
                              beat (default None: no ``params`` ports)

    Ports
    -----
    take, count, last : In    a beat is taken this cycle, its count and last flag
    beat : Out(range(beats + 1))   (combinational) the place of that beat in its run (0: the
                              first); saturates at ``beats``
    store : Out(1)            (combinational) the beat is well formed, fits the buffer, and so
                              did every earlier beat of its run: write it
    first : Out(1)            the next beat starts a run (1 after reset)
    n : Out(range(capacity + lanes + 1))   values of the run so far (from the cycle after each
                              beat; stops growing past ``capacity``)
    error : Out(errors)       the run's first error (from the cycle after the beat that shows
                              it; cleared by the next run's first beat): N_ZERO (the run is one
                              beat of count 0), BAD_BEAT (count 0 or > lanes, or a partial beat
                              not last), N_OVER_CAPACITY (more than ``beats`` beats)
    fail, fail_code : In      record a later error (``error = fail_code`` from the next cycle;
                              a beat taken in the same cycle takes precedence)
    params_in, params : In, Out   (with ``params``) ``params = params_in`` of the run's first
                              beat, from the next cycle until the next run's

    Latency `INTAKE_LATENCY`: the registered outputs show a beat from the next cycle. No
    handshake of its own: one beat a cycle.
    """

    def __init__(self, *, lanes, beats, capacity, errors=RunError, params=None):
        self.lanes = _int_param("lanes", lanes, 1, 32)
        self.beats = _int_param("beats", beats, 1)
        self.capacity = _int_param("capacity", capacity, 1)
        if not (isinstance(errors, type) and issubclass(errors, enum.Enum)
                and all(getattr(errors, name, None) is not None
                        and errors[name].value == RunError[name].value
                        for name in _BEAT_CODES)):
            raise TypeError(f"errors must be an Amaranth enum with the members "
                            f"{', '.join(_BEAT_CODES)} at the values of RunError, not {errors!r}")
        self.errors = errors
        self.params_shape = None if params is None else _shape_param("params", params)
        super().__init__({
            **({} if params is None else {"params_in": In(params), "params": Out(params)}),
            "take": In(1),
            "count": In(range(lanes + 1)),
            "last": In(1),
            "beat": Out(range(beats + 1)),
            "store": Out(1),
            "first": Out(1, init=1),
            "n": Out(range(capacity + lanes + 1)),
            "error": Out(errors),
            "fail": In(1),
            "fail_code": In(errors),
        })

    def elaborate(self, platform):
        m = Module()
        E, lanes, beats = self.errors, self.lanes, self.beats
        first = self.first
        position = Signal(range(beats + 1))     # beats of the run so far
        beat_now = Mux(first, 0, position)
        n_now = Mux(first, 0, self.n)
        error_now = Mux(first, E.NONE, self.error)
        beat_error = Signal(E)
        with m.If(self.count == 0):
            m.d.comb += beat_error.eq(Mux(first & self.last, E.N_ZERO, E.BAD_BEAT))
        with m.Elif((self.count > lanes) | (~self.last & (self.count != lanes))):
            m.d.comb += beat_error.eq(E.BAD_BEAT)
        with m.Elif(beat_now >= beats):
            m.d.comb += beat_error.eq(E.N_OVER_CAPACITY)
        m.d.comb += [
            self.beat.eq(beat_now),
            self.store.eq((beat_error == E.NONE) & (error_now == E.NONE)),
        ]
        with m.If(self.fail):
            m.d.sync += self.error.eq(self.fail_code)
        with m.If(self.take):
            m.d.sync += [
                position.eq(Mux(beat_now >= beats, beats, beat_now + 1)),
                self.n.eq(Mux(n_now > self.capacity, n_now, n_now + self.count)),
                self.error.eq(Mux(error_now != E.NONE, error_now, beat_error)),
                first.eq(self.last),
            ]
            if self.params_shape is not None:
                with m.If(first):
                    m.d.sync += self.params.eq(self.params_in)
        return m


# ----------------------------------------------------------------------------------- reader


class RowReader(wiring.Component):
    """Reads the rows of one pass from a buffer of rows of ``lanes`` keys, one row a cycle,
    into register R1 (its ``o``).

    Parameters (keyword-only)
    -------------------------
    key_shape : shape-castable   one key
    lanes : 1, 2, 4, 8, 16 or 32  keys a row
    rows : int, >= 1             rows of the buffer region a pass reads
    capacity : int, >= 1         the most keys a pass reads

    Ports
    -----
    load, elems : In          ``elems`` (sampled with ``load``): the keys a pass reads, in
                              rows 0 .. ceil(elems / lanes) - 1; lanes from ``elems`` on read
                              as not ok
    start : In(1)             read those rows once, from the next cycle (the pass must have
                              left R1: ``busy`` low)
    may_read : In(1)          the next row (``addr``) may be read now (default 1; the top-k
                              engine holds a pass back behind the writer of its rows)
    addr, read_en : Out       the buffer's read port: row ``addr`` with ``read_en`` (the
                              memory's data register loads when ``read_en``)
    read_data : In            the read port's data (the row of the last enabled read)
    inject : In(stream)       a row that R1 takes in place of a read, whatever ``o.ready``
                              (``ready`` is always 1; the unit injects only while no pass reads)
    o : Out(stream)           R1: `read_row_layout`; moves when ``o.ready`` (bubbles too: the
                              unit's pipeline stalls as a whole)
    busy : Out(1)             a pass still has rows to read or in flight (up to R1)

    Latency `READER_LATENCY`: a row read in cycle x is on ``o`` from x + 2; a ``start`` in
    cycle s reads row 0 in s + 1 (on ``o`` from s + 3). Throughput one row a cycle while
    ``o.ready`` and ``may_read`` are high.
    """

    def __init__(self, *, key_shape, lanes, rows, capacity):
        self.key_shape = _shape_param("key_shape", key_shape)
        self.lanes = check_lanes(lanes)
        self.rows = _int_param("rows", rows, 1)
        self.capacity = _int_param("capacity", capacity, 1)
        super().__init__({
            "load": In(1),
            "elems": In(range(capacity + 1)),
            "start": In(1),
            "may_read": In(1, init=1),
            "addr": Out(range(rows)),
            "read_en": Out(1),
            "read_data": In(data.ArrayLayout(key_shape, lanes)),
            "inject": In(stream.Signature(key_row_layout(key_shape, lanes, rows))),
            "o": Out(stream.Signature(read_row_layout(key_shape, lanes, rows))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, rows = self.lanes, self.rows
        lane_bits = (lanes - 1).bit_length()
        advance = self.o.ready
        elems = Signal(range(self.capacity + 1))
        final_row = Signal(range(rows))          # (elems - 1) // lanes
        row = Signal(range(rows))                # the next row to read
        reading = Signal()
        issue = Signal()
        last_row = Signal()
        m.d.comb += [
            self.addr.eq(row), self.read_en.eq(advance),
            issue.eq(reading & advance & self.may_read), last_row.eq(row == final_row),
        ]
        # the read in flight (the memory's output register holds its row)
        fetch_valid, fetch_last = Signal(), Signal()
        fetch_row = Signal(range(rows))
        with m.If(advance):
            m.d.sync += [fetch_valid.eq(issue), fetch_row.eq(row), fetch_last.eq(last_row)]
        with m.If(issue):
            m.d.sync += row.eq(row + 1)
            with m.If(last_row):
                m.d.sync += reading.eq(0)
        with m.If(self.load):
            m.d.sync += [elems.eq(self.elems), final_row.eq((self.elems - 1) >> lane_bits)]
        with m.If(self.start):
            m.d.sync += [row.eq(0), reading.eq(1)]
        fetch_lane_ok = Signal(lanes)               # index = fetch_row * lanes + lane < elems
        for lane in range(lanes):
            m.d.comb += fetch_lane_ok[lane].eq(Cat(Const(lane, lane_bits), fetch_row) < elems)

        # R1
        r1_valid = Signal()
        r1, inj = self.o.payload, self.inject.payload
        with m.If(self.inject.valid):
            m.d.sync += [r1_valid.eq(1), r1.keys.eq(inj.keys), r1.lane_ok.eq(inj.lane_ok),
                         r1.row.eq(inj.row), r1.last.eq(inj.last), r1.injected.eq(1)]
        with m.Elif(advance):
            m.d.sync += [r1_valid.eq(fetch_valid), r1.keys.eq(self.read_data),
                         r1.lane_ok.eq(fetch_lane_ok), r1.row.eq(fetch_row), r1.last.eq(fetch_last),
                         r1.injected.eq(0)]
        m.d.comb += [self.inject.ready.eq(1), self.o.valid.eq(r1_valid),
                     self.busy.eq(reading | fetch_valid | r1_valid)]
        return m


# ------------------------------------------------------------------------- digit histogram


class DigitHistogram(wiring.Component):
    """Counts, for every bin of a digit, the flagged lanes whose digit lies above it:
    2**D - 1 popcounts of ``lanes`` flags a cycle.

    Parameters (keyword-only)
    -------------------------
    lanes : int, 1..32        digits a beat
    digit_bits : int, 1..6    D
    capacity : int, >= 1      the most keys counted (sets `count_shape`)
    restarts : bool           beats carry ``restart`` (default False: a multiplexer per count
                              less, and a cleaner adder tree)

    Ports
    -----
    i : In(stream(digit_flags_layout(lanes, digit_bits, restarts)))   ``ready`` is always 1
    load, init : In           ``counts = init`` from the next cycle (a beat counted in the same
                              cycle is lost: load between passes)
    counts : Out(ArrayLayout(count_shape(capacity), 2**D - 1))
        ``counts[j] = init[j]`` + the flagged lanes with digit > j over the beats since the
        last ``load`` or ``restart`` beat (a ``restart`` beat counts from ``init`` again;
        ``init`` is read when the beat is added, a cycle after it is taken).
        With ``init = -(keys still to find)`` its sign says whether the key sought has a digit
        above j.
    busy : Out(1)             a beat is on its way into ``counts``

    Latency `HISTOGRAM_LATENCY`: a beat taken in cycle t is in ``counts`` from t + 2 (its
    flags are registered, then added). One beat a cycle.
    """

    def __init__(self, *, lanes, digit_bits, capacity, restarts=False):
        self.lanes = _int_param("lanes", lanes, 1, 32)
        self.digit_bits = _int_param("digit_bits", digit_bits, 1, 6)
        self.capacity = _int_param("capacity", capacity, 1)
        if not isinstance(restarts, bool):
            raise TypeError(f"restarts must be a bool, not {restarts!r}")
        self.restarts = restarts
        counts = data.ArrayLayout(count_shape(capacity), (1 << digit_bits) - 1)
        super().__init__({
            "i": In(stream.Signature(digit_flags_layout(lanes, digit_bits, restarts))),
            "load": In(1),
            "init": In(counts),
            "counts": Out(counts),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, bins = self.lanes, 1 << self.digit_bits
        beat = self.i.payload
        counted, restart = Signal(), Signal()
        m.d.sync += counted.eq(self.i.valid)
        if self.restarts:
            m.d.sync += restart.eq(beat.restart)
        above = [Signal(lanes, name=f"above{j}") for j in range(bins - 1)]
        for j in range(bins - 1):
            m.d.sync += above[j].eq(Cat(*[beat.flags[lane] & (beat.digits[lane] >= j + 1)
                                          for lane in range(lanes)]))
        counts, init = self.counts, self.init
        with m.If(self.load):
            m.d.sync += [counts[j].eq(init[j]) for j in range(bins - 1)]
        with m.Elif(counted):
            for j in range(bins - 1):
                count = Mux(restart, init[j], counts[j]) if self.restarts else counts[j]
                for lane in range(lanes):       # (a chain from the count: one adder tree)
                    count = count + above[j][lane]
                m.d.sync += counts[j].eq(count)
        m.d.comb += [self.i.ready.eq(1), self.busy.eq(counted)]
        return m


# ------------------------------------------------------------------------------ bin select


class BinSelect(wiring.Component):
    """Picks the bin of the current digit that holds the k-th largest candidate, and keeps the
    count of keys still to find across digits.

    It keeps two counts: ``candidates - k_rem`` and ``-k_rem`` (k_rem: how many of the k
    largest are still to find among the candidates). With the histogram's
    ``above[j] = (candidates with digit > j) - k_rem`` they are the counts of digits >= b for
    b = 0 .. 2**D (the first >= 0, the last < 0); the bin is the highest b whose count is >= 0.
    Their signs form a thermometer code, so the pick is one-hot: an AND-OR tree, no priority
    chain.

    Parameters (keyword-only)
    -------------------------
    digit_bits : int, 1..6    D
    capacity : int, >= 1      the most candidates
    digits : int, >= 1        L, digits of a key

    Ports
    -----
    start, n, k : In          begin a selection: n candidates, k to find (1 <= k <= n)
    above : In(ArrayLayout(count_shape(capacity), 2**D - 1))   the histogram's counts
    go, digit : In            pick the bin from ``above`` now, for digit ``digit`` (L - 1: the
                              top one; carried along to ``bin_digit``)
    valid : Out(1)            the cycle after ``go``; the outputs below are held until the next
    bin, bin_digit : Out      the chosen bin, and its digit
    in_bin : Out(range(capacity + 1))   the candidates in it (the next digit's candidates)
    to_find : Out(range(capacity + 1))  how many of the k largest lie in it (1..in_bin)
    base : Out(count_shape(capacity))   ``-to_find``: the histogram's ``init`` for the next
                              digit
    At the end of the ``valid`` cycle the bin becomes the current selection: the next ``go``
    picks within it. After the last digit, the key whose digits are the chosen bins is the k-th
    largest, and ``to_find`` of the keys equal to it belong to the k largest.

    Latency `BIN_SELECT_LATENCY` (``go`` to ``valid``).
    """

    def __init__(self, *, digit_bits, capacity, digits):
        self.digit_bits = _int_param("digit_bits", digit_bits, 1, 6)
        self.capacity = _int_param("capacity", capacity, 1)
        self.digits = _int_param("digits", digits, 1)
        cs = count_shape(capacity)
        super().__init__({
            "digit": In(range(max(digits, 2))),
            "bin_digit": Out(range(max(digits, 2))),
            "start": In(1),
            "n": In(range(capacity + 1)),
            "k": In(range(capacity + 1)),
            "above": In(data.ArrayLayout(cs, (1 << digit_bits) - 1)),
            "go": In(1),
            "valid": Out(1),
            "bin": Out(digit_bits),
            "in_bin": Out(range(capacity + 1)),
            "to_find": Out(range(capacity + 1)),
            "base": Out(cs),
        })

    def elaborate(self, platform):
        m = Module()
        D, bins, cs = self.digit_bits, 1 << self.digit_bits, count_shape(self.capacity)
        candidates_minus_k = Signal(cs)         # count of digits >= 0
        minus_k = Signal(cs)                    # count of digits >= 2**D (none)
        ge = [candidates_minus_k, *[self.above[j] for j in range(bins - 1)], minus_k]
        chosen = [Signal(name=f"bin_is{b}") for b in range(bins)]
        for b in range(bins):
            here = ~ge[b][-1] if b else Const(1)
            next_up = ~ge[b + 1][-1] if b + 1 < bins else Const(0)
            m.d.comb += chosen[b].eq(here & ~next_up)

        def pick(values):
            acc = Mux(chosen[0], values[0], 0)
            for b in range(1, bins):
                acc = acc | Mux(chosen[b], values[b], 0)
            return acc

        count_at_bin = Signal(cs)               # candidates with digit >= bin, minus k_rem
        count_above_bin = Signal(cs)            # ... with digit > bin, minus k_rem: -to_find
        m.d.sync += self.valid.eq(self.go)
        with m.If(self.go):
            m.d.sync += [self.bin.eq(pick([Const(b, D) for b in range(bins)])),
                         count_at_bin.eq(pick(ge[:bins])), count_above_bin.eq(pick(ge[1:])),
                         self.bin_digit.eq(self.digit)]
        with m.If(self.valid):
            m.d.sync += [candidates_minus_k.eq(count_at_bin), minus_k.eq(count_above_bin)]
        with m.If(self.start):
            m.d.sync += [candidates_minus_k.eq(self.n - self.k), minus_k.eq(-self.k)]
        m.d.comb += [
            self.in_bin.eq(count_at_bin - count_above_bin),
            self.to_find.eq(-count_above_bin),
            self.base.eq(count_above_bin),
        ]
        return m


# --------------------------------------------------------------------- output pass, ties


class TieCounter(wiring.Component):
    """The tie bookkeeping of an output pass: how many keys equal to the threshold are still to
    keep, and how many of them the next row may keep.

    Parameters (keyword-only)
    -------------------------
    lanes : int, 1..32        keys a row
    capacity : int, >= 1      the most ties

    Ports
    -----
    set, ties : In            ``ties`` keys equal to the threshold are to be kept, from the
                              next cycle (``set`` wins over ``take`` in the same cycle)
    take, row_ties : In       a row with ``row_ties`` keys equal to the threshold passed
    cap : Out(range(lanes + 1))   min(ties still to keep, lanes): a key equal to the threshold
                              is kept when fewer than ``cap`` such keys come before it in its row

    Latency `TIE_COUNTER_LATENCY` (``cap`` follows ``set`` and ``take`` at the next cycle). The
    update compares side by side (no subtraction before a compare).
    """

    def __init__(self, *, lanes, capacity):
        self.lanes = _int_param("lanes", lanes, 1, 32)
        self.capacity = _int_param("capacity", capacity, 1)
        super().__init__({
            "set": In(1),
            "ties": In(range(capacity + 1)),
            "take": In(1),
            "row_ties": In(range(lanes + 1)),
            "cap": Out(range(lanes + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, cap, count = self.lanes, self.cap, self.row_ties
        left = Signal(range(self.capacity + 1))     # ties still to keep
        with m.If(self.set):
            m.d.sync += [left.eq(self.ties),
                         cap.eq(Mux(self.ties >= lanes, lanes, self.ties))]
        with m.Elif(self.take):
            none_left = count > left
            m.d.sync += [
                left.eq(Mux(none_left, 0, left - count)),
                cap.eq(Mux(none_left, 0, Mux(left >= count + lanes, lanes,
                                             (left - count)[:len(cap)]))),
            ]
        return m


class ThresholdCompare(wiring.Component):
    """Output pass, stage 1: flags every key above the threshold (``greater``) and every key
    equal to it (``equal``); lanes that are not ok neither.

    Parameters (keyword-only): ``key_shape``, ``lanes`` (1..32), ``rows`` (>= 1), as for
    `RowReader`.

    Ports
    -----
    i : In(stream(compare_layout))     ``i.ready`` is ``o.ready`` (the pipeline's advance)
    threshold : In(key_shape)          the k-th largest key
    keep_all : In(1)                   every ok lane is ``greater``, none ``equal`` (the top-k
                                       engine's statistical mode with k = n)
    o : Out(stream(compared_layout))   ``keys``, ``row``, ``last``, ``match`` as given

    Latency `COMPARE_LATENCY`: one register; it moves when ``o.ready``, bubbles included.
    """

    def __init__(self, *, key_shape, lanes, rows):
        self.key_shape = _shape_param("key_shape", key_shape)
        self.lanes = _int_param("lanes", lanes, 1, 32)
        self.rows = _int_param("rows", rows, 1)
        super().__init__({
            "i": In(stream.Signature(compare_layout(key_shape, lanes, rows))),
            "threshold": In(key_shape),
            "keep_all": In(1),
            "o": Out(stream.Signature(compared_layout(key_shape, lanes, rows))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o, thr, keep_all = self.i.payload, self.o.payload, self.threshold, self.keep_all
        valid = Signal()
        m.d.comb += [self.i.ready.eq(self.o.ready), self.o.valid.eq(valid)]
        with m.If(self.o.ready):
            m.d.sync += [valid.eq(self.i.valid), o.keys.eq(i.keys), o.row.eq(i.row),
                         o.last.eq(i.last), o.match.eq(i.match)]
            m.d.sync += [
                o.greater.eq(Cat(*[i.lane_ok[lane] & (keep_all | (i.keys[lane] > thr))
                              for lane in range(self.lanes)])),
                o.equal.eq(Cat(*[i.lane_ok[lane] & ~keep_all & (i.keys[lane] == thr)
                              for lane in range(self.lanes)])),
            ]
        return m


class TieBreaker(wiring.Component):
    """Output pass, stages 2 and 3: keeps every key above the threshold and, of the keys equal
    to it, the first ``ties`` of the pass (lowest index first).

    Parameters (keyword-only): ``key_shape``, ``lanes`` (1..32), ``rows`` (>= 1), ``capacity``
    (>= 1, the most ties).

    Ports
    -----
    i : In(stream(compared_layout))    ``i.ready`` is ``o.ready`` (the pipeline's advance)
    ties_set, ties : In                the pass keeps ``ties`` keys equal to the threshold
                                       (`TieCounter`); set before its first row arrives
    o : Out(stream(flagged_layout))    ``keep = greater | (equal & among the first ties)``
    busy : Out(1)                      a row is in stage 2 or 3

    Latency `TIE_BREAK_LATENCY`: stage 2 registers each key's rank among the row's ties and the
    row's tie count, stage 3 the keep flags (each a small compare with a register). It moves
    when ``o.ready``, bubbles included.
    """

    def __init__(self, *, key_shape, lanes, rows, capacity):
        self.key_shape = _shape_param("key_shape", key_shape)
        self.lanes = check_lanes(lanes)
        self.rows = _int_param("rows", rows, 1)
        self.capacity = _int_param("capacity", capacity, 1)
        super().__init__({
            "i": In(stream.Signature(compared_layout(key_shape, lanes, rows))),
            "ties_set": In(1),
            "ties": In(range(capacity + 1)),
            "o": Out(stream.Signature(flagged_layout(key_shape, lanes, rows))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, i, o = self.lanes, self.i.payload, self.o.payload
        advance = self.o.ready
        m.submodules.ranks = ranks = PrefixCount(lanes)
        m.submodules.ties = ties = TieCounter(lanes=lanes, capacity=self.capacity)
        m.d.comb += [ranks.flags.eq(i.equal), ties.set.eq(self.ties_set), ties.ties.eq(self.ties),
                     self.i.ready.eq(advance)]
        # stage 2: tie ranks
        r_valid, r_last = Signal(), Signal()
        r_keys = Signal(data.ArrayLayout(self.key_shape, lanes))
        r_row = Signal(range(self.rows))
        r_greater, r_equal = Signal(lanes), Signal(lanes)
        r_rank = Signal(data.ArrayLayout(range(lanes), lanes))
        r_ties = Signal(range(lanes + 1))
        with m.If(advance):
            m.d.sync += [r_valid.eq(self.i.valid), r_keys.eq(i.keys), r_row.eq(i.row),
                         r_last.eq(i.last), r_greater.eq(i.greater), r_equal.eq(i.equal),
                         r_ties.eq(ranks.total)]
            m.d.sync += [r_rank[lane].eq(ranks.prefix[lane]) for lane in range(lanes)]
        m.d.comb += [ties.take.eq(advance & r_valid), ties.row_ties.eq(r_ties)]
        # stage 3: keep flags
        valid = Signal()
        m.d.comb += [self.o.valid.eq(valid), self.busy.eq(r_valid | valid)]
        with m.If(advance):
            m.d.sync += [valid.eq(r_valid), o.keys.eq(r_keys), o.row.eq(r_row),
                         o.last.eq(r_last)]
            m.d.sync += [o.keep[lane].eq(r_greater[lane]
                                         | (r_equal[lane] & (r_rank[lane] < ties.cap)))
                         for lane in range(lanes)]
        return m
