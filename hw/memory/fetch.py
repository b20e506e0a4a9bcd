"""The fetch unit's plane reader and DRAM arbiter: rows of a DRAM plane into an on-chip buffer.

A *plane* is one tensor of one head group in DRAM (`golden.dram_image`): rows of d elements of
``bits`` bits each, packed densely (element j of row r at bit (r*d + j)*bits from the plane's
base, little-endian), rows back to back. A *run* is a sequence of consecutive rows (tokens
``start .. start+count-1``) that goes to consecutive buffer positions ``dst .. dst+count-1``;
buffer position p holds flat elements p*d .. p*d+d-1 of a buffer of M-element words (word
``e // M``, lane ``e % M``), the layout the Q.K and prob x V arrays read.

`PlaneReader` turns runs into DRAM burst requests exactly as
`golden.dram_image.PlaneLayout.run_requests` does (the B-aligned beat range of the run, cut into
bursts of at most ``max_burst`` beats), and the returned beats into buffer writes: the beats are
realigned by the run's skip (its first byte's offset in its beat), cut into chunks of CG groups
of 8 elements (CG*bits bytes: 2 groups of 8-bit and wider elements, 4 of 4-bit ones, at least a
beat's worth where the word allows it) through a ring of 2 lcm(B, CG*bits) bytes (two halves, so
that a beat comes in while the chunks of the one before go out), and each chunk is written
with group enables (8 elements a group) into its word; a chunk that straddles two words takes
two writes. `DramArbiter` shares one DRAM port among several readers in round-robin order and
returns each response to the reader that asked (responses come back in request order).
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spatten.config import MemoryConfig

__all__ = ["req_layout", "resp_layout", "run_layout", "write_layout", "run_info_layout",
           "PlaneReader", "BurstIssuer", "DramArbiter", "ISSUE_LATENCY"]

#: cycles from a run taken by a `BurstIssuer` to its first request (its record taken at once)
ISSUE_LATENCY = 3


def _log2(x: int) -> int:
    return x.bit_length() - 1


def req_layout(addr_width: int, max_burst: int) -> data.StructLayout:
    """A DRAM read request: ``beats`` beats from the B-aligned byte address ``addr``."""
    return data.StructLayout({"addr": unsigned(addr_width), "beats": range(max_burst + 1)})


def resp_layout(beat_bytes: int) -> data.StructLayout:
    """A DRAM response beat: byte k (the byte at address a + k) is ``data[8k:8k+8]``."""
    return data.StructLayout({"data": unsigned(8 * beat_bytes), "last": 1, "error": 1})


def run_layout(token_bits: int, capacity: int) -> data.StructLayout:
    """A run: rows ``start .. start+count-1`` of the plane to positions ``dst ..``."""
    return data.StructLayout({"start": unsigned(token_bits), "count": range(capacity + 1),
                              "dst": range(capacity)})


def write_layout(elems: int, bits: int, is_signed: bool, depth: int) -> data.StructLayout:
    """One buffer write: ``data`` to the lanes of word ``addr`` whose group (8 lanes) is enabled
    in ``en``."""
    shape = signed(bits) if is_signed else unsigned(bits)
    return data.StructLayout({"addr": range(depth), "data": data.ArrayLayout(shape, elems),
                              "en": unsigned(elems // 8)})


class PlaneReader(wiring.Component):
    """Runs of plane rows -> DRAM requests -> buffer writes.

    Parameters (keyword-only)
    -------------------------
    bits : int
        Bits per element of the plane (1..16).
    is_signed : bool
        Elements are two's complement (K MSB, V, Q) or unsigned (K LSB).
    elems : int
        M, lanes of a buffer word (a power of two >= 8).
    depth : int
        Words of the buffer.
    memory : MemoryConfig
        beat_bytes B, max_burst, addr_width (DRAM byte address bits), token_bits (bits of a row
        index in the plane).
    capacity : int
        Buffer positions (rows): the largest run and the largest ``dst``.

    Ports
    -----
    cmd : In(stream(run_layout))
        Runs, in order. A run of ``count = 0`` does nothing.
    base : In(addr_width)
        The plane's byte address (a multiple of B), sampled with each run.
    d_log2 : In(range(log2(M) + 1))
        log2 of the row length d (3..log2 M), sampled with each run.
    req : Out(stream(req_layout)), resp : In(stream(resp_layout))
        The DRAM port (`sim.dram.DramModel`'s, or a `DramArbiter` port).
    wr : Out(stream(write_layout))
        Buffer writes, in order.
    busy : Out(1)
        A run is in the reader (accepted, its last write not yet transferred).
    done : Out(1)
        Pulses once per run with ``count != 0``, in order, when its last write has been
        transferred (or, after an error beat, when its remaining beats have been swallowed);
        a dropped run (bad base or d) does not pulse.
    error : Out(1)
        Sticky until reset: a run with a misaligned base or d out of range was dropped (no
        request), or a response beat had its error bit set (its run writes nothing more).
    beats : Out(32)
        Response beats received since reset (wrapping).

    Throughput: one request every cycle while a run's bursts are issued (3 cycles to set up a
    run); one chunk written a cycle, at least a beat's worth (B = 16: 8- and 12-bit planes in
    chunks of 2 groups, 4- to 7-bit planes in chunks of 4 when a word has 4 groups or more), so
    one response beat a cycle; a chunk that runs past the end of a word takes two cycles.
    """

    def __init__(self, *, bits: int, is_signed: bool, elems: int, depth: int,
                 memory: MemoryConfig, capacity: int):
        try:
            self._check(bits, is_signed, elems, depth, memory, capacity)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # refused: never elaborated, no "never used" warning
            raise
        self.bits, self.is_signed, self.elems, self.depth = bits, is_signed, elems, depth
        self.memory, self.capacity = memory, capacity
        addr_width = self.addr_width = memory.addr_width
        token_bits = self.token_bits = memory.token_bits
        B = memory.beat_bytes
        # a chunk: CG groups of 8 elements, at least a beat's worth when the word allows it
        # (2 groups of 8-bit or wider elements, 4 of 4- to 7-bit ones, ...), at most a word
        G = elems // 8
        cg = 2
        while cg * bits < B and 2 * cg <= G:
            cg *= 2
        self.chunk_groups = cg
        self.chunk_bytes = self.chunk_groups * bits
        # the chunk ring: twice the least common multiple of beat and chunk, so that a beat
        # can come in while the last one's chunks go out (one beat a cycle when bits <= 8)
        self.lcm_bytes = 2 * B * self.chunk_bytes // math.gcd(B, self.chunk_bytes)
        super().__init__({
            "cmd": In(stream.Signature(run_layout(token_bits, capacity))),
            "base": In(addr_width),
            "d_log2": In(range(_log2(elems) + 1)),
            "req": Out(stream.Signature(req_layout(addr_width, memory.max_burst))),
            "resp": In(stream.Signature(resp_layout(B))),
            "wr": Out(stream.Signature(write_layout(elems, bits, is_signed, depth))),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "beats": Out(32),
        })

    @staticmethod
    def _check(bits, is_signed, elems, depth, memory, capacity):
        if not (isinstance(bits, int) and 1 <= bits <= 16):
            raise ValueError(f"bits must be an integer from 1 to 16, not {bits!r}")
        if not isinstance(is_signed, bool):
            raise TypeError(f"is_signed must be a bool, not {is_signed!r}")
        if not (isinstance(elems, int) and elems >= 8 and elems & (elems - 1) == 0):
            raise ValueError(f"elems must be a power of two >= 8, not {elems!r}")
        for name, v in (("depth", depth), ("capacity", capacity)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if not isinstance(memory, MemoryConfig):
            raise TypeError(f"memory must be a MemoryConfig, not {memory!r}")

    def elaborate(self, platform):
        m = Module()
        B = self.memory.beat_bytes
        LB = _log2(B)
        bits, M = self.bits, self.elems
        LM = _log2(M)
        G = M // 8                              # groups of a word
        CB = self.chunk_bytes                   # bytes of a chunk (CG groups)
        CG = self.chunk_groups
        L = self.lcm_bytes
        NS, NC = L // B, L // CB                # beat slots, chunk slots of the chunk buffer
        AW = self.addr_width
        GW = _group_bits(M, self.capacity)                # group counts of a run
        EW = _element_bits(M, self.capacity)              # element positions

        error = Signal()
        m.d.comb += self.error.eq(error)

        # ------------------------------------------------------------ runs -> requests
        m.submodules.issuer = issuer = BurstIssuer(bits=bits, elems=M, memory=self.memory,
                                                   capacity=self.capacity)
        wiring.connect(m, wiring.flipped(self.cmd), issuer.cmd)
        wiring.connect(m, issuer.req, wiring.flipped(self.req))
        m.d.comb += [issuer.base.eq(self.base), issuer.d_log2.eq(self.d_log2)]
        with m.If(issuer.dropped):
            m.d.sync += error.eq(1)
        # the runs whose beats are awaited, oldest first: the head is the current run
        info_layout = issuer.info.payload.shape()
        m.submodules.info = info = SyncFIFOBuffered(width=info_layout.size, depth=4)
        head = data.View(info_layout, info.r_data)
        m.d.comb += [info.w_en.eq(issuer.info.valid), info.w_data.eq(issuer.info.payload),
                     issuer.info.ready.eq(info.w_rdy)]

        # ------------------------------------------------------------ response side: realign
        # out beat j of a run = bytes skip + jB .. skip + jB + B - 1 of its beats: from input
        # beat j (and j + 1 when skip > 0)
        r_cnt = Signal(AW - LB + 1)             # beats of the run received
        r_bursts = Signal(AW - LB + 1)          # bursts of the run completed (last beats)
        r_out = Signal(AW - LB + 1)             # realigned beats emitted
        r_prev = Signal(8 * B)
        r_dead = Signal()                       # an error beat: drop the run's remaining beats
        out_beats = Signal(AW - LB + 1)         # ceil(groups * bits / B)
        run_bytes = Signal(GW + 4)
        m.d.comb += [run_bytes.eq(head.groups * bits),
                     out_beats.eq((run_bytes + (B - 1)) >> LB)]
        # the chunk buffer takes a realigned beat when it has room (see below)
        cb_room = Signal()
        ra_v = Signal()                         # a realigned beat is offered to the buffer
        ra_data = Signal(8 * B)
        extra = Signal()                        # the run's last output needs no further input
        resp = self.resp
        pay = resp.payload
        wide = Signal(16 * B)
        m.d.comb += wide.eq(Cat(r_prev, pay.data))
        skip = head.skip
        run_active = Signal()
        m.d.comb += run_active.eq(info.r_rdy & ~r_dead)
        # cases: skip = 0: each input beat j < out_beats is out beat j (the beats after are
        # padding). skip > 0: input beat j >= 1 completes out beat j - 1; after the last input
        # beat, out beat beats - 1 may still be due (from that beat alone): `extra`
        last_in = Signal()
        m.d.comb += [last_in.eq(r_bursts == head.bursts),
                     extra.eq(run_active & (skip != 0) & last_in & (r_out < out_beats))]
        shifted_wide = Signal(8 * B)
        shifted_last = Signal(8 * B)
        m.d.comb += [shifted_wide.eq(wide >> (skip * 8)),
                     shifted_last.eq(r_prev >> (skip * 8))]
        emit_from_input = Signal()
        m.d.comb += emit_from_input.eq(Mux(skip == 0, r_out < out_beats,
                                           (r_cnt != 0) & (r_out < out_beats)))
        with m.If(extra):
            m.d.comb += [ra_v.eq(1), ra_data.eq(shifted_last), resp.ready.eq(0)]
        with m.Elif(info.r_rdy & ~last_in):
            with m.If(r_dead):
                m.d.comb += resp.ready.eq(1)    # swallow the failed run's remaining beats
            with m.Else():
                m.d.comb += [resp.ready.eq(~emit_from_input | cb_room),
                             ra_v.eq(resp.valid & emit_from_input & ~pay.error),
                             ra_data.eq(Mux(skip == 0, pay.data, shifted_wide))]
        beats = Signal(32)
        m.d.comb += self.beats.eq(beats)
        r_take = Signal()
        m.d.comb += r_take.eq(resp.valid & resp.ready)
        with m.If(r_take):
            m.d.sync += [beats.eq(beats + 1), r_prev.eq(pay.data), r_cnt.eq(r_cnt + 1),
                         r_bursts.eq(r_bursts + pay.last)]
            with m.If(pay.error):
                m.d.sync += [error.eq(1), r_dead.eq(1)]
        ra_take = Signal()
        m.d.comb += ra_take.eq(ra_v & cb_room)
        with m.If(ra_take):
            m.d.sync += r_out.eq(r_out + 1)

        # ------------------------------------------------------------ chunk buffer
        # L bytes: beat slot s = bytes s*B .. s*B + B - 1, chunk slot c = bytes c*CB ..
        cbuf = [Signal(8 * B, name=f"cbuf{s}") for s in range(NS)]
        occ = Signal(range(L + 1))              # bytes written and not yet read
        wslot = Signal(range(max(NS, 2)))
        cslot = Signal(range(max(NC, 2)))
        groups_left = Signal(GW)                # groups of the run not yet chunked
        m.d.comb += cb_room.eq(occ <= L - B)
        flat = Cat(*cbuf)
        chunk = Signal(8 * CB)
        with m.Switch(cslot):
            for c in range(NC):
                with m.Case(c):
                    m.d.comb += chunk.eq(flat[8 * CB * c:8 * CB * (c + 1)])
        with m.If(ra_take):
            with m.Switch(wslot):
                for s in range(NS):
                    with m.Case(s):
                        m.d.sync += cbuf[s].eq(ra_data)
            m.d.sync += wslot.eq(Mux(wslot == NS - 1, 0, wslot + 1))

        # ------------------------------------------------------------ writer
        # a chunk is `take` = min(CG, groups left) groups from group slot g0 of its word on; one
        # that runs past the word's last group takes a second write into the next word
        take = Signal(range(CG + 1))
        ch_ok = Signal()
        m.d.comb += [take.eq(Mux(groups_left >= CG, CG, groups_left)),
                     ch_ok.eq(run_active & (groups_left != 0) & (occ >= take * bits))]
        e_pos = Signal(EW)                      # element position of the chunk's first group
        second = Signal()                       # the second write of a straddling chunk
        w_addr = Signal(range(self.depth))
        g0 = Signal(range(max(G, 2)))
        if G > 1:
            m.d.comb += g0.eq(e_pos[3:LM])
        end = Signal(range(G + CG + 1))
        m.d.comb += [w_addr.eq((e_pos >> LM) + second), end.eq(g0 + take)]
        straddle = Signal()
        m.d.comb += straddle.eq(end > G)
        wr = self.wr
        # word slot s takes chunk group (s + rot) mod CG, rot = -g0 (first write) or G - g0
        LCG = _log2(CG)
        rot = Signal(LCG)
        m.d.comb += rot.eq(Mux(second, G, 0) - g0)
        groups = [chunk[8 * bits * k:8 * bits * (k + 1)] for k in range(CG)]
        for s in range(G):
            src = Signal(8 * bits, name=f"src{s}")
            with m.Switch((rot + s)[:LCG]):
                for k in range(CG):
                    with m.Case(k):
                        m.d.comb += src.eq(groups[k])
            for i in range(8):
                m.d.comb += wr.payload.data[8 * s + i].eq(src[i * bits:(i + 1) * bits])
        en = Signal(G)
        for s in range(G):
            first_g = ~second & (g0 <= s) & (s < end)
            second_g = second & (s + G < end)
            m.d.comb += en[s].eq(first_g | second_g)
        m.d.comb += [wr.valid.eq(ch_ok), wr.payload.addr.eq(w_addr), wr.payload.en.eq(en)]
        done_chunk = Signal()
        m.d.comb += done_chunk.eq(wr.valid & wr.ready & (second | ~straddle))
        with m.If(wr.valid & wr.ready & straddle & ~second):
            m.d.sync += second.eq(1)
        read_bytes = take * bits
        with m.If(done_chunk):
            m.d.sync += [second.eq(0), e_pos.eq(e_pos + (take << 3)),
                         groups_left.eq(groups_left - take),
                         cslot.eq(Mux(cslot == NC - 1, 0, cslot + 1))]
        # occupancy: + B per beat taken, - the chunk's bytes per chunk written
        m.d.sync += occ.eq(occ + Mux(ra_take, B, 0) - Mux(done_chunk, read_bytes, 0))

        # run start / end: the info FIFO head is the current run
        loaded = Signal()                       # groups_left/e_pos hold the head run's values
        with m.If(info.r_rdy & ~loaded):
            m.d.sync += [loaded.eq(1), groups_left.eq(head.groups), e_pos.eq(head.dst_e)]
        fin = Signal()
        m.d.comb += fin.eq(loaded & ((groups_left == 0) | r_dead) & last_in & ~extra)
        m.d.comb += [info.r_en.eq(fin), self.done.eq(fin)]
        with m.If(fin):
            m.d.sync += [loaded.eq(0), r_cnt.eq(0), r_bursts.eq(0), r_out.eq(0), r_dead.eq(0),
                         occ.eq(0), wslot.eq(0), cslot.eq(0)]
        # a run's chunks start only once its values are loaded
        with m.If(~loaded):
            m.d.comb += [wr.valid.eq(0), done_chunk.eq(0)]

        m.d.comb += self.busy.eq(issuer.busy | info.r_rdy)
        return m


def run_info_layout(elems: int, memory: MemoryConfig, capacity: int) -> data.StructLayout:
    """What the response side of a `PlaneReader` needs of a run: the ``skip`` bytes of its first
    beat, its ``beats`` and ``bursts``, its 8-element ``groups`` and its first element position
    ``dst_e`` in the buffer."""
    LB, AW = _log2(memory.beat_bytes), memory.addr_width
    return data.StructLayout({
        "skip": unsigned(max(1, LB)), "beats": unsigned(AW - LB + 1),
        "bursts": unsigned(AW - LB + 1), "groups": unsigned(_group_bits(elems, capacity)),
        "dst_e": unsigned(_element_bits(elems, capacity))})


def _group_bits(elems, capacity):
    """Bits of a run's count of 8-element groups."""
    return (capacity * elems // 8).bit_length() + 1


def _element_bits(elems, capacity):
    """Bits of an element position in the buffer."""
    return (capacity * elems).bit_length() + 1


class BurstIssuer(wiring.Component):
    """The request side of a `PlaneReader`: runs -> DRAM burst requests and run records.

    A run on ``cmd`` (with the plane's ``base`` and ``d_log2``, sampled with it) is taken while
    no run is in the issuer; its byte range takes two cycles, then its record
    (`run_info_layout`) goes out on ``info``, and once that is taken its B-aligned beats go out
    on ``req`` in bursts of at most ``max_burst`` beats, one request a cycle: the first request
    is offered `ISSUE_LATENCY` cycles after the run is taken (``info`` ready). A run with a
    misaligned base or d out of range is dropped (``dropped`` pulses, no request); a run of
    ``count = 0`` does nothing. ``busy``: a run is in the issuer."""

    def __init__(self, *, bits: int, elems: int, memory: MemoryConfig, capacity: int):
        try:
            PlaneReader._check(bits, False, elems, capacity, memory, capacity)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # refused: never elaborated
            raise
        self.bits, self.elems, self.memory, self.capacity = bits, elems, memory, capacity
        super().__init__({
            "cmd": In(stream.Signature(run_layout(memory.token_bits, capacity))),
            "base": In(memory.addr_width),
            "d_log2": In(range(_log2(elems) + 1)),
            "req": Out(stream.Signature(req_layout(memory.addr_width, memory.max_burst))),
            "info": Out(stream.Signature(run_info_layout(elems, memory, capacity))),
            "dropped": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        B, MB = self.memory.beat_bytes, self.memory.max_burst
        LB = _log2(B)
        bits = self.bits
        LM = _log2(self.elems)
        AW = self.memory.addr_width
        GW = _group_bits(self.elems, self.capacity)
        EW = _element_bits(self.elems, self.capacity)

        # ------------------------------------------------------------ request side
        # stage 1: offsets (start*bits and count*bits, in bytes after the shift by d/8)
        offsets_valid = Signal()
        offset = Signal(AW)
        length = Signal(AW)
        offset_groups = Signal(GW)
        offset_dst = Signal(EW)
        run_base = Signal(AW)
        # stage 2: byte range
        range_valid = Signal()
        first_byte = Signal(AW + 1)
        stop_byte = Signal(AW + 1)
        range_groups = Signal(GW)
        range_dst = Signal(EW)
        # the bursts
        issuing = Signal()
        next_addr = Signal(AW)
        beats_left = Signal(AW - LB + 1)

        cmd = self.cmd.payload
        d_log2 = self.d_log2
        bad = Signal()
        misaligned = (self.base[:LB] != 0) if LB else Const(0)
        m.d.comb += bad.eq(misaligned | (d_log2 < 3) | (d_log2 > LM))
        take = Signal()
        m.d.comb += [self.cmd.ready.eq(~offsets_valid & ~range_valid & ~issuing),
                     take.eq(self.cmd.valid & self.cmd.ready)]
        with m.If(take):
            with m.If(bad):
                m.d.comb += self.dropped.eq(1)
            with m.Elif(cmd.count != 0):
                m.d.sync += [offsets_valid.eq(1), run_base.eq(self.base),
                             offset_dst.eq(cmd.dst << d_log2)]
                with m.Switch(d_log2):
                    for k in range(3, LM + 1):
                        with m.Case(k):
                            # a row is d / 8 groups of bits bytes: bits * 2**(k-3) bytes
                            m.d.sync += [offset.eq((cmd.start * bits) << (k - 3)),
                                         length.eq((cmd.count * bits) << (k - 3)),
                                         offset_groups.eq(cmd.count << (k - 3))]
        with m.If(offsets_valid):
            m.d.sync += [offsets_valid.eq(0), range_valid.eq(1), first_byte.eq(run_base + offset),
                         stop_byte.eq(run_base + offset + length), range_groups.eq(offset_groups),
                         range_dst.eq(offset_dst)]
        lo = Signal(AW + 1)
        hi = Signal(AW + 2)
        m.d.comb += [lo.eq(first_byte & ~Const(B - 1, AW + 1)),
                     hi.eq((stop_byte + (B - 1)) & ~Const(B - 1, AW + 2))]
        n_beats = Signal(AW - LB + 1)
        m.d.comb += n_beats.eq((hi - lo) >> LB)
        info = self.info
        with m.If(range_valid & info.ready):
            m.d.sync += [range_valid.eq(0), issuing.eq(1), next_addr.eq(lo),
                         beats_left.eq(n_beats)]
        w_info = info.payload
        m.d.comb += [
            info.valid.eq(range_valid),
            w_info.skip.eq(first_byte[:LB] if LB else 0),
            w_info.beats.eq(n_beats),
            w_info.bursts.eq((n_beats + (MB - 1)) // MB if MB & (MB - 1) else
                             (n_beats + (MB - 1)) >> _log2(MB)),
            w_info.groups.eq(range_groups),
            w_info.dst_e.eq(range_dst),
        ]
        burst = Signal(range(MB + 1))
        m.d.comb += [
            burst.eq(Mux(beats_left > MB, MB, beats_left)),
            self.req.valid.eq(issuing),
            self.req.payload.addr.eq(next_addr),
            self.req.payload.beats.eq(burst),
        ]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [next_addr.eq(next_addr + MB * B), beats_left.eq(beats_left - burst)]
            with m.If(beats_left <= MB):
                m.d.sync += issuing.eq(0)
        m.d.comb += self.busy.eq(offsets_valid | range_valid | issuing)
        return m


class DramArbiter(wiring.Component):
    """Round-robin sharing of one DRAM port among ``ports`` requesters.

    ``req[i]``/``resp[i]`` face the requesters, ``dram_req``/``dram_resp`` the memory. A request
    is forwarded when the id FIFO (depth ``memory.max_outstanding``) has room: it records which
    port asked, so that the in-order responses go back to it (popped with each ``last`` beat).
    Grants rotate: after port i, ports i+1, i+2, ... are preferred; ports whose ``urgent`` bit
    is set go before all others (rotating among themselves). Addresses have ``memory.addr_width``
    bits. ``dram_req`` comes from a register stage: no path from ``dram_req.ready`` to a
    requester's ``ready``.
    """

    def __init__(self, *, ports: int, memory: MemoryConfig):
        if not (isinstance(ports, int) and ports >= 1) or not isinstance(memory, MemoryConfig):
            self._MustUse__silence = True   # refused: never elaborated
            if not isinstance(memory, MemoryConfig):
                raise TypeError(f"memory must be a MemoryConfig, not {memory!r}")
            raise ValueError(f"ports must be a positive integer, not {ports!r}")
        self.ports, self.memory, self.addr_width = ports, memory, memory.addr_width
        rq = stream.Signature(req_layout(memory.addr_width, memory.max_burst))
        rs = stream.Signature(resp_layout(memory.beat_bytes))
        members = {}
        for i in range(ports):
            members[f"req{i}"] = In(rq)
            members[f"resp{i}"] = Out(rs)
        members["dram_req"] = Out(rq)
        members["dram_resp"] = In(rs)
        members["urgent"] = In(ports)
        super().__init__(members)

    def req(self, i):
        return getattr(self, f"req{i}")

    def resp(self, i):
        return getattr(self, f"resp{i}")

    def elaborate(self, platform):
        m = Module()
        N = self.ports
        IW = max(1, (N - 1).bit_length())
        m.submodules.ids = ids = SyncFIFOBuffered(width=IW, depth=self.memory.max_outstanding)
        # output register of the request side
        o_v = Signal()
        o_pay = Signal.like(self.dram_req.payload)
        m.d.comb += [self.dram_req.valid.eq(o_v), self.dram_req.payload.eq(o_pay)]
        free = Signal()
        m.d.comb += free.eq((~o_v | self.dram_req.ready) & ids.w_rdy)
        last = Signal(IW, init=N - 1)
        # choose the first valid port after `last`, an urgent one if any
        valid = Signal(N)
        m.d.comb += valid.eq(Cat(*[self.req(i).valid for i in range(N)]))
        cand = Signal(N)
        m.d.comb += cand.eq(Mux((valid & self.urgent) != 0, valid & self.urgent, valid))
        grant = Signal(IW)
        any_v = Signal()
        for k in reversed(range(N)):        # rotation order: last+1, last+2, ...
            for i in range(N):
                with m.If((last == i) & cand[(i + 1 + k) % N]):
                    m.d.comb += [grant.eq((i + 1 + k) % N), any_v.eq(1)]
        with m.If(o_v & self.dram_req.ready):
            m.d.sync += o_v.eq(0)
        with m.If(free & any_v):
            for i in range(N):
                with m.If(grant == i):
                    m.d.comb += self.req(i).ready.eq(1)
                    m.d.sync += o_pay.eq(self.req(i).payload)
            m.d.sync += [o_v.eq(1), last.eq(grant)]
            m.d.comb += [ids.w_en.eq(1), ids.w_data.eq(grant)]
        # responses
        rsp = self.dram_resp
        for i in range(N):
            mine = ids.r_rdy & (ids.r_data == i)
            m.d.comb += [self.resp(i).valid.eq(rsp.valid & mine),
                         self.resp(i).payload.eq(rsp.payload)]
            with m.If(mine):
                m.d.comb += rsp.ready.eq(self.resp(i).ready)
        m.d.comb += ids.r_en.eq(rsp.valid & rsp.ready & rsp.payload.last)
        return m
