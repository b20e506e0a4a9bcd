"""The memory side around the query pipeline: head groups from DRAM to outputs, two in flight.

A *job* is one head group (one K/V head of one layer, `golden.progressive`): a descriptor on
``job`` (`job_layout`: ``n``, ``n_stored``, the plane bases ``k_msb_base``, ``k_lsb_base``,
``v_base``, ``q_base[h]`` (bytes, B-aligned) and the pipeline's run registers ``d_log2``,
``k_v``, ``renorm``, ``shift``, ``scale``, ``post_shift``, ``pq``, ``tau``, ``fill_mid``), its n
surviving tokens on ``survivors`` (ascending indices into the group's K and V planes, ``last``
on the n-th; buffer position i holds survivor i) and its queries on ``queries`` (one beat
``{head, row, last}`` per query: row ``row`` of query head ``head``'s Q plane). Jobs follow each
other on the three streams in the same order. `Core` fetches what the schedule of
`golden.progressive.run_group` says, through four `hw.memory.fetch.PlaneReader` s that share the
DRAM port (`hw.memory.fetch.DramArbiter`), and runs the queries through
`hw.attention.attention.Attention`:

1. the survivors stream in; they are checked (strictly ascending, below ``n_stored``, at most
   ``capacity``), kept in the index buffer, and their K MSB rows fetched (runs of consecutive
   tokens, bursts of ``max_burst`` beats); without progressive quantization (``pq = 0``) their K
   LSB rows too, and without value pruning (``k_v >= n``) their V rows, both as the survivors
   arrive (scans of the index buffer);
2. each query's Q row is fetched (one run, up to ``q_slots`` rows in flight) and handed to the
   pipeline; with ``pq = 1`` the K LSB rows of all survivors are fetched once, when the
   pipeline first asks for them;
3. for each final pass, the V rows of its kept keys that are not yet in the V buffer are fetched
   (runs of consecutive tokens); prob x V starts the query when they are in.

Double buffering: the K and V buffers are two banks of capacity/2 words (`Attention`'s
``bank``). A job of n <= capacity/2 keys takes the bank the running job does not use, so its
survivors, K (and V, LSB) rows are fetched while the job before it computes; a larger job takes
both banks and waits for the one before it to finish. Two jobs are in flight at most (one
fetching, one running); Q rows of the next job are fetched as soon as its descriptor is in.

The parts (each a component of its own): `hw.memory.job_slots.JobSlots` (the two jobs in flight and
the pointers that follow them), `hw.memory.intake.Intake` (descriptors, survivors, K MSB runs), two
`hw.memory.scan.SlotScan` s (the K LSB fetch and the V prefetch), `hw.memory.kept_rows.KeptRows`
(the V rows a final pass still needs), `hw.memory.run_merge.RunMerge` (the V reader's two sources),
`hw.memory.query_rows.QueryRows` (Q rows fetched ahead) and `hw.memory.job_runner.JobRunner` (the
running job). The sizes are the configuration's: ``memory.group_size`` query heads a group,
``token_bits``, ``addr_width``, ``q_slots`` Q rows in flight.

Every output, row beat and probability equals the golden model's, and every tensor's DRAM bytes
equal `GroupResult.dram_bytes` (beats x B, counted per reader: ``beats_*``, since reset).

Bad input ends the job with one ``o`` beat with ``error = last = 1`` (its survivors and queries
are consumed, nothing it fetched is used) and sets ``error``/``error_code`` (`CoreError`, which
hold until the next job ends): n = 0 or over capacity, a misaligned base, a head dimension out
of range, k_v = 0 (all four refused before any fetch), a survivor not above the one before or not
below ``n_stored``, a query head outside the group, a DRAM error beat, or an error of the
pipeline itself (``ATTENTION``, with `Attention`'s code on ``attention_error``). The jobs after it
run as usual. Reset returns to idle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import Config

from ..attention.attention import Attention, output_layout, row_info_layout, run_registers
from ..attention.attention import ErrorCode as AttnError
from ..common.rowstream import row_layout
from .fetch import DramArbiter, PlaneReader, req_layout, resp_layout
from .intake import Intake
from .job_runner import JobRunner
from .job_slots import (
    CoreError,
    JobSlots,
    RowsState,
    SlotState,
    bank_word,
    check_config,
    first_position,
    job_layout,
    pick,
    query_cmd_layout,
    survivor_layout,
    upper_bank,
)
from .kept_rows import KeptRows
from .query_rows import QueryRows
from .run_merge import RunMerge
from .scan import Coalescer, Scanner, SlotScan

__all__ = ["Core", "CoreError", "Coalescer", "Scanner", "survivor_layout", "query_cmd_layout",
           "job_layout"]


class Core(wiring.Component):
    """Head groups from DRAM to outputs, two in flight; see the module docstring.

    Parameters (keyword-only)
    -------------------------
    config : Config
        ``attention`` (the pipeline), ``memory`` (beats, bursts, outstanding, msb_bits, and the
        job interface: ``group_size`` query heads per head group, ``token_bits`` of a token
        index, ``addr_width`` of a DRAM byte address, ``q_slots`` Q rows fetched ahead).

    Status (counters since reset, wrapping): ``jobs_done``, ``busy_cycles`` (a job in flight),
    ``refetched`` (rows dropped for a full-precision pass), ``beats_*`` (DRAM beats per tensor)
    and the memory waits: ``wait_k`` (the pipeline is idle, the next job's K MSB rows are not
    in), ``wait_q`` (the pipeline would take a query whose Q row is not fetched yet, or not sent
    by the host), ``wait_lsb`` (a full-precision pass waits for the K LSB rows), ``wait_v``
    (prob x V has a query's pairs, its V rows are not in).
    """

    def __init__(self, *, config: Config):
        self.config = check_config(self, config)
        att, mem = config.attention, config.memory
        self.group, self.token_bits, self.addr_width = (mem.group_size, mem.token_bits,
                                                        mem.addr_width)
        self.lsb_bits = mem.lsb_bits(att.data_width)
        super().__init__({
            "dram_req": Out(stream.Signature(req_layout(mem.addr_width, mem.max_burst))),
            "dram_resp": In(stream.Signature(resp_layout(mem.beat_bytes))),
            "job": In(stream.Signature(job_layout(config))),
            "survivors": In(stream.Signature(survivor_layout(config))),
            "queries": In(stream.Signature(query_cmd_layout(config))),
            "o": Out(stream.Signature(output_layout(att))),
            "probs": Out(stream.Signature(row_layout(unsigned(att.prob_bits),
                                                     att.softmax_lanes))),
            "row": Out(stream.Signature(row_info_layout(att))),
            # status
            "busy": Out(1),
            "jobs_done": Out(32),
            "error": Out(1),
            "error_code": Out(CoreError),
            "attention_error": Out(AttnError),
            "refetched": Out(32),
            "busy_cycles": Out(32),
            "beats_k_msb": Out(32),
            "beats_k_lsb": Out(32),
            "beats_v": Out(32),
            "beats_q": Out(32),
            "wait_k": Out(32),
            "wait_q": Out(32),
            "wait_lsb": Out(32),
            "wait_v": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        att_cfg, mem = cfg.attention, cfg.memory
        M, Mv, W, N = att_cfg.qk_mults, att_cfg.pv_mults, att_cfg.data_width, att_cfg.capacity

        m.submodules.att = att = Attention(config=cfg)
        m.submodules.arb = arb = DramArbiter(ports=4, memory=mem)
        wiring.connect(m, arb.dram_req, wiring.flipped(self.dram_req))
        wiring.connect(m, wiring.flipped(self.dram_resp), arb.dram_resp)

        def reader(name, bits, is_signed, elems):
            r = PlaneReader(bits=bits, is_signed=is_signed, elems=elems, depth=N, memory=mem,
                            capacity=N)
            m.submodules[name] = r
            return r

        rk = reader("rd_k_msb", mem.msb_bits, True, M)
        rl = reader("rd_k_lsb", self.lsb_bits, False, M)
        rv = reader("rd_v", W, True, Mv)
        rq = reader("rd_q", W, True, M)
        readers = (rk, rl, rv, rq)
        for i, r in enumerate(readers):
            wiring.connect(m, r.req, arb.req(i))
            wiring.connect(m, arb.resp(i), r.resp)
        m.d.comb += [self.beats_k_msb.eq(rk.beats), self.beats_k_lsb.eq(rl.beats),
                     self.beats_v.eq(rv.beats), self.beats_q.eq(rq.beats)]

        # the job slots: job j in slot j % 2; each part of the core follows its own pointer
        m.submodules.slots = slots = JobSlots(config=cfg)
        intake_job, query_job, run_job = slots.intake, slots.querying, slots.running
        m.d.comb += slots.dram_error.eq(Cat(r.error for r in readers).any())

        # the index buffer: position i of a job's half holds its survivor i
        m.submodules.index = index = Memory(shape=unsigned(mem.token_bits), depth=N, init=[])

        def index_reader(unit):
            port = index.read_port()
            m.d.comb += [port.addr.eq(unit.rd_addr), port.en.eq(1), unit.rd_data.eq(port.data)]

        # the front: descriptors and survivors in, K MSB rows fetched
        m.submodules.intake = intake = Intake(config=cfg)
        wiring.connect(m, wiring.flipped(self.job), intake.job)
        wiring.connect(m, wiring.flipped(self.survivors), intake.survivors)
        wiring.connect(m, intake.index_write, index.write_port())
        m.d.comb += [intake.slot.eq(intake_job),
                     intake.other_banks.eq(pick(m, slots.slots, ~slots.intake_slot).banks)]
        for name in ("admit", "admit_job", "admit_banks", "admit_error", "admit_code", "survivor",
                     "survivor_written", "survivor_bad", "survivor_last", "close", "close_state",
                     "close_bad_list"):
            m.d.comb += getattr(slots, name).eq(getattr(intake, name))
        wiring.connect(m, intake.k_msb_runs, rk.cmd)
        m.d.comb += [rk.base.eq(intake_job.job.k_msb_base), rk.d_log2.eq(intake_job.job.d_log2),
                     intake.k_msb_busy.eq(rk.busy)]
        wiring.connect(m, rk.wr, att.k_msb_wr)
        m.d.comb += att.k_msb_wr.payload.addr.eq(bank_word(rk.wr.payload.addr,
                                                           upper_bank(intake_job), N))

        # K LSB rows: one job at a time, the running job's first (it stalls the pipeline)
        m.submodules.lsb_scan = lsb_scan = SlotScan(config=cfg)
        index_reader(lsb_scan)
        lsb_job = pick(m, slots.slots, lsb_scan.slot)
        m.d.comb += [lsb_scan.slots.eq(slots.slots), lsb_scan.preferred.eq(slots.run_slot),
                     lsb_scan.wanted.eq(Cat(s.lsb == RowsState.WANTED for s in slots.slots)),
                     lsb_scan.drained.eq(~rl.busy),
                     slots.lsb_in.eq(lsb_scan.done), slots.lsb_slot.eq(lsb_scan.slot),
                     rl.base.eq(lsb_job.job.k_lsb_base), rl.d_log2.eq(lsb_job.job.d_log2)]
        wiring.connect(m, lsb_scan.runs, rl.cmd)
        wiring.connect(m, rl.wr, att.k_lsb_wr)
        m.d.comb += att.k_lsb_wr.payload.addr.eq(bank_word(rl.wr.payload.addr,
                                                           upper_bank(lsb_job), N))

        # V rows: a job's prefetch (without value pruning) and the running job's missing rows
        m.submodules.v_scan = v_scan = SlotScan(config=cfg)
        m.submodules.kept_rows = kept_rows = KeptRows(config=cfg)
        m.submodules.v_merge = v_merge = RunMerge(config=cfg)
        index_reader(v_scan)
        index_reader(kept_rows)
        v_job = pick(m, slots.slots, v_scan.slot)
        run_prefetch_pending = run_job.v_prefetch == RowsState.WANTED
        m.d.comb += [v_scan.slots.eq(slots.slots), v_scan.preferred.eq(slots.run_slot),
                     v_scan.wanted.eq(Cat(s.v_prefetch == RowsState.WANTED
                                          for s in slots.slots)),
                     v_scan.drained.eq(~v_merge.prefetch_in_flight),
                     slots.v_prefetch_in.eq(v_scan.done), slots.v_prefetch_slot.eq(v_scan.slot),
                     kept_rows.clear.eq(intake.admit),
                     kept_rows.clear_banks.eq(intake.admit_banks),
                     kept_rows.mark.eq(v_scan.item),
                     kept_rows.mark_position.eq(v_scan.item_position),
                     kept_rows.first.eq(first_position(run_job, N)),
                     kept_rows.runs_in_flight.eq(v_merge.demand_in_flight),
                     kept_rows.prefetch_pending.eq(run_prefetch_pending),
                     att.v_done.eq(kept_rows.done)]
        wiring.connect(m, att.kept, kept_rows.kept)
        wiring.connect(m, kept_rows.runs, v_merge.demand)
        wiring.connect(m, v_scan.runs, v_merge.prefetch)
        m.d.comb += [v_merge.demand_base.eq(run_job.job.v_base),
                     v_merge.demand_d_log2.eq(run_job.job.d_log2),
                     v_merge.demand_upper.eq(upper_bank(run_job)),
                     v_merge.prefetch_base.eq(v_job.job.v_base),
                     v_merge.prefetch_d_log2.eq(v_job.job.d_log2),
                     v_merge.prefetch_upper.eq(upper_bank(v_job)),
                     rv.base.eq(v_merge.base), rv.d_log2.eq(v_merge.d_log2),
                     v_merge.done.eq(rv.done)]
        wiring.connect(m, v_merge.cmd, rv.cmd)
        wiring.connect(m, rv.wr, att.v_wr)
        m.d.comb += att.v_wr.payload.addr.eq(bank_word(rv.wr.payload.addr, v_merge.write_upper,
                                                       N))

        # queries -> Q rows, fetched ahead of the pipeline
        m.submodules.query_rows = query_rows = QueryRows(config=cfg)
        wiring.connect(m, wiring.flipped(self.queries), query_rows.queries)
        m.d.comb += [query_rows.slot.eq(query_job), query_rows.slot_index.eq(slots.query_slot),
                     slots.queries_taken.eq(query_rows.queries_taken),
                     slots.bad_head.eq(query_rows.bad_head),
                     rq.base.eq(query_rows.base), rq.d_log2.eq(query_rows.d_log2),
                     query_rows.done.eq(rq.done)]
        wiring.connect(m, query_rows.cmd, rq.cmd)
        wiring.connect(m, rq.wr, query_rows.wr)

        # the running job
        m.submodules.runner = runner = JobRunner(config=cfg)
        for name in run_registers(att_cfg):
            m.d.comb += getattr(att, name).eq(getattr(run_job.job, name))
        # V rows are waited for per query unless the job's prefetch has brought them all in
        # before its run starts (then prob x V streams the pairs as they come, no gating)
        m.d.comb += [att.n.eq(run_job.job.n), att.bank.eq(upper_bank(run_job)),
                     att.v_wait.eq(run_job.v_prefetch != RowsState.IN),
                     att.lsb_ready.eq(run_job.lsb == RowsState.IN),
                     runner.slot.eq(run_job), runner.slot_index.eq(slots.run_slot),
                     slots.run_start.eq(runner.run_start), slots.release.eq(runner.release),
                     slots.want_lsb.eq(runner.want_lsb),
                     runner.rows_empty.eq(query_rows.empty),
                     runner.rows_requesting.eq(query_rows.requesting),
                     runner.lsb_needed.eq(att.lsb_needed), runner.v_stall.eq(att.v_stall)]
        wiring.connect(m, query_rows.rows, runner.rows)
        wiring.connect(m, runner.q, att.q)
        wiring.connect(m, att.o, runner.results)
        wiring.connect(m, runner.o, wiring.flipped(self.o))
        wiring.connect(m, att.probs, wiring.flipped(self.probs))
        wiring.connect(m, att.row, wiring.flipped(self.row))

        # status
        busy = Signal()
        m.d.comb += [busy.eq(Cat(s.state != SlotState.FREE for s in slots.slots).any()),
                     self.busy.eq(busy), self.attention_error.eq(att.error_code)]
        for name in ("jobs_done", "error", "error_code", "wait_k", "wait_q", "wait_lsb",
                     "wait_v"):
            m.d.comb += getattr(self, name).eq(getattr(runner, name))
        with m.If(busy):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        with m.If(self.row.valid & self.row.ready & self.row.payload.refetch):
            m.d.sync += self.refetched.eq(self.refetched + 1)

        # DRAM priority (`DramArbiter.urgent`): what the pipeline waits for goes first: Q rows,
        # the K MSB and LSB rows of the job it is about to run, the V rows of the running job;
        # the next job's prefetches take the rest of the bandwidth
        run_slot = slots.run_slot
        m.d.comb += arb.urgent.eq(Cat(
            (run_job.state == SlotState.INTAKE) & (slots.intake_slot == run_slot),   # K MSB
            (lsb_scan.slot == run_slot) & (run_job.lsb == RowsState.WANTED),         # K LSB
            (run_job.state == SlotState.RUN) & (v_merge.demand_in_flight | kept_rows.busy
                                                | run_prefetch_pending),              # V
            1))                                                                      # Q
        return m

