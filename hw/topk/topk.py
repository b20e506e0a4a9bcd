"""The top-k engine: radix select with P comparisons per cycle, exact ties, survivors in order.

Contract
--------
Input ``i`` (stream of beats, ``lanes`` values each): ``data[0..count-1]`` are values
``v[row*P + lane]``; every beat but the last has ``count == lanes``; the beat with ``last`` ends the
run (its count is 1..lanes). ``k`` and ``mode`` are sampled with the first beat of a run.

Output ``o`` (stream): the selected ``(index, value)`` pairs in ascending index order, packed
``lanes`` per beat (``index[0..count-1]``, ``value[0..count-1]``; lanes above read zero); only
the final beat (``last``) may be partial. A run that selects nothing (``k = 0``, or an error) emits
one beat with
``count = 0, last = 1``, so a consumer never waits for an end that does not come.

``mode = EXACT``: exactly ``k`` values: the ``k`` largest; of the values equal to the k-th
largest (``threshold``), the lowest indices. ``mode = STATISTICAL``: every value at or above
``mean + z * sigma`` (``hw/topk/stat_threshold.py``), an approximate-k selection in one pass.

Status: ``busy`` from the first input beat to the last output beat; ``done`` (level) from then
until the next run starts; ``error`` and ``error_code`` (level, same lifetime as ``done``);
``threshold``, ``n``, ``selected``, ``select_cycles`` (cycles after the last input beat until the
threshold is known) and ``total_cycles`` (first input beat to last output beat, inclusive) are
valid with ``done``. Bad input (see `ErrorCode`) never hangs: the engine keeps accepting beats
until ``last``, then emits the empty packet with ``error`` set. A synchronous reset in the middle
of a run returns it to idle.

How it works (exact mode)
-------------------------
Values are kept as unsigned *keys* (sign bit flipped). The key is cut into D-bit digits from the
top. While the input streams in it is written to buffer A and the top digit's histogram is
gathered: for every bin b the count of candidates whose digit is >= b (2**D - 1 popcounts of P
flags per cycle). The bin that holds the k-th largest key is then known, and the number of keys
above it. Each later pass reads the candidates (buffer A for the first one, then the packed
survivors of the previous pass, ping-ponging between buffers B and C), keeps those in the chosen
bin (zero eliminator + beat packer, written back densely and shifted left by one digit, so that
every pass finds its digits at fixed places) and histograms the next digit. After the
last digit the k-th key is known exactly, and so is the number of keys equal to it that must be
kept. A final pass over A compares every key with it and emits the survivors in order, keeping
ties lowest index first. Selection costs about n/P + ceil(n/(P*2**D))/P + ... + 6 cycles a pass.

The blocks are components (the README's diagram): the radix-select core of `hw/topk/radix.py`
(`RunIntake`, `RowReader` with R1, `DigitHistogram`, `BinSelect`, `ThresholdCompare`,
`TieBreaker`), the zero eliminator, the beat packer, the `CandidateWriter`
(`hw/topk/radix_writer.py`), the `Moments` (`hw/topk/radix_moments.py`) and `StatThreshold`; this
unit wires them and runs the passes (`Phase`).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import TopKConfig

from .radix import (
    BinSelect,
    DigitHistogram,
    RowReader,
    RunError,
    RunIntake,
    ThresholdCompare,
    TieBreaker,
    buffer_address,
)
from .radix_compactor import Compactor
from .radix_feed import FixedDigitFilter, SurvivorFeed
from .radix_moments import StatisticalMode
from .radix_output import ValueOutput, value_beat_layout
from .radix_status import RunStatus
from .radix_writer import CandidateWriter, candidate_layout

__all__ = ["Mode", "ErrorCode", "Phase", "TopK", "input_layout", "output_layout"]


class Mode(enum.Enum, shape=2):
    EXACT = 0
    STATISTICAL = 1
    # 2 and 3 are not modes: a run started with them ends with ErrorCode.BAD_MODE.


class ErrorCode(enum.Enum, shape=3):
    """The top-k engine's error codes: the run checks of `RunError` (same values) and its own
    BAD_MODE."""
    NONE = RunError.NONE.value
    N_ZERO = RunError.N_ZERO.value                      # the run held no values
    N_OVER_CAPACITY = RunError.N_OVER_CAPACITY.value    # more values than the buffers hold
    K_OVER_N = RunError.K_OVER_N.value                  # k > n
    BAD_BEAT = RunError.BAD_BEAT.value  # count 0 or > lanes, or a partial beat not the last
    BAD_MODE = 5                        # an unknown mode


class Phase(enum.Enum, shape=4):
    """The engine's control states."""
    RECV = 0          # taking a run's beats (idle before its first)
    CHECK = 1         # the cycle after the last beat (in R1): errors, k = 0, the mode
    HIST_DRAIN = 2    # the last beat's flags are on their way into the counts
    BIN_SELECT = 3    # pick the bin (committed next cycle) and start the next pass
    PASS = 4          # a candidate pass reads
    STAT = 5          # statistical: the sums drain, then the threshold unit runs
    OUTPUT = 6        # the output pass, until the last output beat leaves
    EMPTY = 7         # the empty packet of a run that selects nothing
    EMPTY_OUT = 8     # ... until it has left


def input_layout(cfg: TopKConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.value_width), cfg.lanes),
        "count": range(cfg.lanes + 1),
        "last": 1,
    })


def output_layout(cfg: TopKConfig) -> data.StructLayout:
    return value_beat_layout(cfg.value_width, cfg.index_width, cfg.lanes)


class TopK(wiring.Component):
    """The top-k engine; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : TopKConfig
        lanes P, value width W, capacity, digit width D.
    statistical : bool (default True)
        Build the statistical mode (moment sums, P squarers, the threshold unit). Without it,
        ``mode = STATISTICAL`` is refused like an unknown mode (``BAD_MODE``); a user that only
        selects exactly saves P multipliers and their logic.
    """

    def __init__(self, *, config: TopKConfig, statistical: bool = True):
        if not isinstance(config, TopKConfig):
            raise TypeError(f"config must be a TopKConfig, not {config!r}")
        if not isinstance(statistical, bool):
            raise TypeError(f"statistical must be a bool, not {statistical!r}")
        self.statistical = statistical
        self.cfg = cfg = config
        super().__init__({
            "i": In(stream.Signature(input_layout(cfg))),
            "k": In(range(cfg.capacity + 1)),
            "mode": In(Mode),
            "o": Out(stream.Signature(output_layout(cfg))),
            "threshold": Out(signed(cfg.value_width)),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "n": Out(range(cfg.capacity + 1)),
            "selected": Out(range(cfg.capacity + 1)),
            "select_cycles": Out(32),
            "total_cycles": Out(32),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        P, W, D, L = cfg.lanes, cfg.value_width, cfg.digit_bits, cfg.digits
        R, CAP, KW = cfg.rows, cfg.capacity, cfg.key_width
        SIGN = 1 << (W - 1)
        key = unsigned(KW)
        m = Module()

        # Three regions of one memory (one read port, one write port): A holds the input keys
        # (row r = input beat r), B and C the packed candidates. One memory, not three, so that
        # the block RAM's output reaches R1 with no multiplexer (and fewer RAM blocks are used).
        row_bits = max(1, (R - 1).bit_length())
        m.submodules.mem = mem = Memory(shape=data.ArrayLayout(key, P),
                                        depth=(2 << row_bits) + R, init=[])
        wp, rp = mem.write_port(), mem.read_port()

        def addr(region, row):
            return buffer_address(row, row_bits, Const(region, 2) if isinstance(region, int)
                                  else region)

        m.submodules.intake = intake = RunIntake(
            lanes=P, beats=R, capacity=CAP, errors=ErrorCode,
            params=data.StructLayout({"k": range(CAP + 1), "mode": Mode}))
        m.submodules.reader = reader = RowReader(key_shape=key, lanes=P, rows=R, capacity=CAP)
        m.submodules.digit_filter = digit_filter = FixedDigitFilter(key_width=KW, digit_bits=D,
                                                                    lanes=P)
        m.submodules.histogram = hist = DigitHistogram(lanes=P, digit_bits=D, capacity=CAP)
        m.submodules.bin_select = bins = BinSelect(digit_bits=D, capacity=CAP, digits=L)
        m.submodules.compare = compare = ThresholdCompare(key_shape=key, lanes=P, rows=R)
        m.submodules.tie_breaker = tie_breaker = TieBreaker(key_shape=key, lanes=P, rows=R,
                                                            capacity=CAP)
        m.submodules.feed = feed = SurvivorFeed(key_width=KW, digit_bits=D, lanes=P, rows=R,
                                                index_width=cfg.index_width)
        # zero eliminator and packer, behind skid buffers: no ready path runs through two units
        m.submodules.compactor = compactor = Compactor(candidate_layout(key, cfg.index_width), P)
        m.submodules.writer = writer = CandidateWriter(key_shape=key, index_width=cfg.index_width,
                                                       lanes=P, rows=R)
        # The output leaves through a skid buffer: `o` is a register, `o.ready` goes no further.
        m.submodules.output = output = ValueOutput(value_width=W, key_width=KW, lanes=P,
                                                   index_width=cfg.index_width)
        wiring.connect(m, feed.o, compactor.i)
        wiring.connect(m, compactor.o, writer.i)
        wiring.connect(m, writer.o, output.i)
        wiring.connect(m, output.o, wiring.flipped(self.o))

        k_reg, mode_reg = intake.params.k, intake.params.mode    # sampled with the first beat
        hist_digit = Signal(range(max(L, 2)), init=L - 1)  # the digit the current pass counts
        filtering = Signal()                    # a candidate pass: keep the keys in bins.bin
        threshold_key = Signal(KW)
        keep_all = Signal()                     # statistical: keep everything
        out_pass = Signal()                     # the reader runs the output pass
        source = Signal(range(3))               # the region the reader reads: A, B or C

        # ---- input beats: keys into A and into R1 (the top digit's histogram)
        beat, injected = self.i.payload, reader.inject.payload
        take = Signal()
        run_start = take & intake.first
        m.d.comb += [take.eq(self.i.valid & self.i.ready), intake.take.eq(take),
                     intake.count.eq(beat.count), intake.last.eq(beat.last),
                     intake.params_in.k.eq(self.k), intake.params_in.mode.eq(self.mode),
                     reader.inject.valid.eq(take), injected.row.eq(intake.beat),
                     injected.last.eq(beat.last)]
        for lane in range(P):
            m.d.comb += [injected.keys[lane].eq(beat.data[lane].as_unsigned() ^ SIGN),
                         injected.lane_ok[lane].eq(beat.count > lane)]
        m.d.comb += [wp.addr.eq(addr(writer.write_buffer + 1, writer.write_row)),
                     wp.data.eq(writer.write_data), wp.en.eq(writer.write_en)]
        with m.If(take):                        # (the writer is idle while a run comes in)
            m.d.comb += [wp.addr.eq(addr(0, intake.beat)), wp.data.eq(injected.keys),
                         wp.en.eq(intake.store)]

        # ---- reader; a pass over B or C stays behind the writer of the pass before it. The
        # pass pipeline moves as a whole when the zero eliminator's feed does.
        advance = feed.candidates.ready
        m.d.comb += [rp.addr.eq(addr(source, reader.addr)), rp.en.eq(reader.read_en),
                     reader.read_data.eq(rp.data), reader.o.ready.eq(advance)]
        behind = [writer.complete[j] | (reader.addr < writer.written[j]) for j in (0, 1)]
        m.d.comb += reader.may_read.eq(Mux(source == 1, behind[0],
                                           Mux(source == 2, behind[1], 1)))

        # ---- filter and histogram (digits at fixed places: `hw/topk/radix_feed.py`)
        r1 = reader.o.payload
        m.d.comb += [digit_filter.keys.eq(r1.keys), digit_filter.lane_ok.eq(r1.lane_ok),
                     digit_filter.filtering.eq(filtering), digit_filter.filter_bin.eq(bins.bin),
                     hist.i.valid.eq(reader.o.valid & advance & ~out_pass),
                     hist.i.payload.flags.eq(digit_filter.match),
                     hist.i.payload.digits.eq(digit_filter.digits)]
        # The counts start at -k (a run's first beat loads them a cycle later, from registers),
        # then at -(keys still to find) for each digit (the bin select's commit).
        run_start_r = Signal()
        m.d.sync += run_start_r.eq(run_start)
        hist_init = Mux(bins.valid, bins.base, -k_reg)
        m.d.comb += hist.load.eq(run_start_r | bins.valid)
        m.d.comb += [hist.init[j].eq(hist_init) for j in range((1 << D) - 1)]

        # ---- bin select (its bin is the next pass's filter); its commit appends a digit to
        # the threshold
        m.d.comb += [bins.above.eq(hist.counts), bins.n.eq(intake.n), bins.k.eq(k_reg),
                     bins.digit.eq(hist_digit)]
        with m.If(bins.valid):
            m.d.sync += threshold_key.eq(Cat(bins.bin, threshold_key[:-D]) if KW > D
                                         else bins.bin)
        m.d.comb += [tie_breaker.ties_set.eq(bins.valid),
                     tie_breaker.ties.eq(bins.to_find)]

        # ---- R2: candidate passes hand on the row and its match flags to the zero eliminator
        # (through the feed); the output pass compares with the threshold, R3 and R4 add the
        # tie ranks and keep flags
        compared = compare.i.payload
        m.d.comb += [
            compare.i.valid.eq(reader.o.valid & ~r1.injected & (out_pass | filtering)),
            compared.keys.eq(r1.keys), compared.lane_ok.eq(r1.lane_ok), compared.row.eq(r1.row),
            compared.last.eq(r1.last), compared.match.eq(digit_filter.match),
            compare.threshold.eq(threshold_key), compare.keep_all.eq(keep_all),
            feed.candidates.valid.eq(compare.o.valid),
            feed.candidates.payload.eq(compare.o.payload),
            compare.o.ready.eq(advance), feed.output_pass.eq(out_pass),
            tie_breaker.i.payload.eq(compare.o.payload),
            tie_breaker.i.valid.eq(compare.o.valid & out_pass),
        ]
        wiring.connect(m, tie_breaker.o, feed.kept)

        # ---- statistical mode: the moments of the input beats (from R1), then the threshold
        if self.statistical:
            m.submodules.statistical = stat = StatisticalMode(config=cfg)
            m.d.comb += [stat.i.valid.eq(reader.o.valid & r1.injected),
                         stat.i.payload.lane_ok.eq(r1.lane_ok), stat.clear.eq(run_start),
                         stat.n.eq(intake.n), stat.k.eq(k_reg)]
            m.d.comb += [stat.i.payload.values[lane].eq((r1.keys[lane][:W] ^ SIGN).as_signed())
                         for lane in range(P)]

        # ---- status
        m.submodules.status = status = RunStatus(lanes=P, capacity=CAP)
        phase = Signal(Phase)
        m.d.comb += [
            status.take.eq(take), status.first.eq(intake.first), status.last.eq(beat.last),
            status.out_take.eq(self.o.valid & self.o.ready),
            status.out_count.eq(self.o.payload.count),
            status.select_done.eq(bins.valid & (bins.bin_digit == 0)),    # (or the statistical
                                                                        # threshold's `done`)
            self.busy.eq(status.busy), self.done.eq(status.done),
            self.n.eq(Mux(intake.n > CAP, CAP, intake.n)),
            self.error_code.eq(intake.error),
            self.error.eq(intake.error != ErrorCode.NONE),
            self.threshold.eq((threshold_key[:W] ^ SIGN).as_signed()),
            self.select_cycles.eq(status.select_cycles),
            self.total_cycles.eq(status.total_cycles),
            self.selected.eq(status.selected),
        ]

        # ---- control
        def start_reader(region, elems):
            m.d.comb += [reader.load.eq(1), reader.elems.eq(elems), reader.start.eq(1)]
            m.d.sync += source.eq(region)

        def end_run():
            # the pass state for the next run is set here, not with its first beat (a shorter
            # path from the input handshake); reset leaves the same values
            m.d.comb += status.end.eq(1)
            m.d.sync += [out_pass.eq(0), hist_digit.eq(L - 1), filtering.eq(0), keep_all.eq(0),
                         phase.eq(Phase.RECV)]

        def fail(code):
            m.d.comb += [intake.fail.eq(1), intake.fail_code.eq(code)]
            m.d.sync += phase.eq(Phase.EMPTY)

        with m.Switch(phase):
            with m.Case(Phase.RECV):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take & beat.last):
                    m.d.sync += phase.eq(Phase.CHECK)

            with m.Case(Phase.CHECK):
                m.d.comb += [bins.start.eq(1), writer.clear.eq(1)]
                with m.If(intake.error != ErrorCode.NONE):
                    m.d.sync += phase.eq(Phase.EMPTY)
                with m.Elif((mode_reg != Mode.EXACT)
                            & ((mode_reg != Mode.STATISTICAL) | (not self.statistical))):
                    fail(ErrorCode.BAD_MODE)
                with m.Elif(k_reg > intake.n):
                    fail(ErrorCode.K_OVER_N)
                with m.Elif(k_reg == 0):
                    m.d.sync += [threshold_key.eq(SIGN * 2 - 1), phase.eq(Phase.EMPTY)]
                if self.statistical:
                    with m.Elif(mode_reg == Mode.STATISTICAL):
                        m.d.comb += stat.start.eq(1)        # (the last beat is in R1 now)
                        m.d.sync += phase.eq(Phase.STAT)
                with m.Else():
                    m.d.sync += phase.eq(Phase.HIST_DRAIN)

            with m.Case(Phase.HIST_DRAIN):
                m.d.sync += phase.eq(Phase.BIN_SELECT)

            with m.Case(Phase.BIN_SELECT):
                # The counts are complete: pick the bin (it commits next cycle) and start the
                # next pass now; its first row reaches R1, where the new bin is needed, after it.
                m.d.comb += bins.go.eq(1)
                with m.If(hist_digit == 0):
                    m.d.sync += [out_pass.eq(1), phase.eq(Phase.OUTPUT)]
                    start_reader(0, intake.n)
                with m.Else():
                    m.d.sync += [hist_digit.eq(hist_digit - 1), filtering.eq(1),
                                 phase.eq(Phase.PASS)]
                    m.d.comb += writer.pass_start.eq(1)
                    with m.If(hist_digit == L - 1):
                        start_reader(0, intake.n)
                    with m.Else():
                        # read what the previous pass wrote (`in_bin` of the previous bin: this
                        # one's shows from the next cycle), write the other buffer
                        start_reader(Mux(source == 1, 2, 1), bins.in_bin)
                        m.d.comb += writer.pass_buffer.eq(source != 1)

            with m.Case(Phase.PASS):
                with m.If(~reader.busy):
                    # every row has passed R1: the last one's counts are complete next cycle
                    m.d.sync += phase.eq(Phase.BIN_SELECT)

            if self.statistical:
                with m.Case(Phase.STAT):
                    with m.If(stat.done):
                        m.d.comb += status.select_done.eq(1)
                        m.d.sync += threshold_key.eq(stat.threshold.as_unsigned() ^ SIGN)
                        with m.If(stat.select_none):
                            m.d.sync += phase.eq(Phase.EMPTY)
                        with m.Else():
                            m.d.sync += [keep_all.eq(stat.select_all), out_pass.eq(1),
                                         phase.eq(Phase.OUTPUT)]
                            m.d.comb += [tie_breaker.ties_set.eq(1), tie_breaker.ties.eq(CAP)]
                            start_reader(0, intake.n)

            with m.Case(Phase.OUTPUT):
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    end_run()

            with m.Case(Phase.EMPTY):
                # one beat with count 0 and last: the packet of a run that selects nothing
                m.d.comb += output.empty.valid.eq(1)
                with m.If(output.empty.ready):
                    m.d.sync += phase.eq(Phase.EMPTY_OUT)

            with m.Case(Phase.EMPTY_OUT):
                with m.If(self.o.valid & self.o.ready):
                    end_run()

        return m
