"""The query pipeline's on-chip K and V buffers: their write paths and the arrays' read ports.

K is held as two bit planes, the MSB plane (``msb_bits`` of `MemoryConfig`) and the LSB plane
(the other data_width - msb_bits bits), so that a progressive-quantization pass can read the MSB
plane alone; V as whole elements. Each buffer is `capacity` words (M resp. Mv elements; key r's
element j at flat element r*d + j, `hw.attention.qk`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, MemoryConfig

from ..memory.fetch import write_layout
from .pv import v_depth, v_word_layout
from .qk import k_depth, k_word_layout

__all__ = ["KVBuffers", "load_layout", "buffer_writes"]


def load_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One ``load`` beat: a whole word of the K (``target`` 0, both planes) or the V buffer
    (``target`` 1)."""
    return data.StructLayout({
        "target": 1,
        "addr": range(cfg.capacity),
        "data": data.ArrayLayout(signed(cfg.data_width), max(cfg.qk_mults, cfg.pv_mults)),
    })


def buffer_writes(cfg: AttentionConfig, memory: MemoryConfig) -> dict:
    """The fetch unit's write streams into the buffers, as signature members (`hw.memory.fetch.
    write_layout`: a word address, data, enables of 8-element groups): the K MSB plane, the K
    LSB plane, V."""
    M, Mv, N = cfg.qk_mults, cfg.pv_mults, cfg.capacity
    return {
        "k_msb_wr": In(stream.Signature(write_layout(M, memory.msb_bits, True, N))),
        "k_lsb_wr": In(stream.Signature(write_layout(M, memory.lsb_bits(cfg.data_width), False,
                                                     N))),
        "v_wr": In(stream.Signature(write_layout(Mv, cfg.data_width, True, N))),
    }


class KVBuffers(wiring.Component):
    """The K buffer (MSB and LSB planes) and the V buffer, written through ``load`` or the
    fetch unit's write streams, read by the Q.K and the prob x V array.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    memory : MemoryConfig (its ``msb_bits``)

    Ports
    -----
    load : In(stream.Signature(`load_layout`(cfg)))
        Whole words, taken in every cycle with ``load_enable`` high: K words (both planes from
        the word's elements) or V words. A word beyond the buffer is dropped.
    load_enable : In(1)
        ``load`` may be taken (the pipeline is idle).
    loading, load_error : Out(1)
        A ``load`` beat is taken this cycle; it is beyond the buffer (dropped).
    k_msb_wr, k_lsb_wr, v_wr : `buffer_writes`
        Writes of 8-element groups of a word (``en``), taken in every cycle without a load.
    offset : In(range(capacity))
        Word offset of the run's bank (0 or capacity/2), added to every read address.
    k_full, fill_mid : In(1)
        How a K word is read: with the LSB plane (``k_full`` in the cycle of the read), or with
        the LSB plane's bits filled by their midpoint 2**(lsb_bits - 1) (``fill_mid``) or 0.
    k_rd : Out(ReadPort.Signature(shape=`hw.attention.qk.k_word_layout`(cfg))), the Q.K array's K
    reads v_rd : Out(ReadPort.Signature(shape=`hw.attention.pv.v_word_layout`(cfg))), prob x V's V
    reads
        Synchronous: the word the cycle after ``en`` and ``addr``. A word read while it is
        written gives the new data (the ports are transparent).
    """

    def __init__(self, *, config, memory):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        if not isinstance(memory, MemoryConfig):
            raise TypeError(f"memory must be a MemoryConfig, not {memory!r}")
        self.config = cfg = config
        self.memory = memory
        self.msb_bits = memory.msb_bits
        self.lsb_bits = memory.lsb_bits(cfg.data_width)
        super().__init__({
            "load": In(stream.Signature(load_layout(cfg))),
            "load_enable": In(1),
            "loading": Out(1),
            "load_error": Out(1),
            **buffer_writes(cfg, memory),
            "offset": In(range(cfg.capacity)),
            "k_full": In(1),
            "fill_mid": In(1),
            "k_rd": Out(ReadPort.Signature(addr_width=(k_depth(cfg) - 1).bit_length(),
                                           shape=k_word_layout(cfg))),
            "v_rd": Out(ReadPort.Signature(addr_width=(v_depth(cfg) - 1).bit_length(),
                                           shape=v_word_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        M, Mv, N = cfg.qk_mults, cfg.pv_mults, cfg.capacity
        MB, LB = self.msb_bits, self.lsb_bits

        m.submodules.kmsb = kmsb = Memory(shape=data.ArrayLayout(signed(MB), M), depth=N,
                                          init=[])
        m.submodules.klsb = klsb = Memory(shape=data.ArrayLayout(unsigned(LB), M), depth=N,
                                          init=[])
        m.submodules.vmem = vmem = Memory(shape=data.ArrayLayout(signed(cfg.data_width), Mv),
                                          depth=N, init=[])
        kmw = kmsb.write_port(granularity=8)
        klw = klsb.write_port(granularity=8)
        vw = vmem.write_port(granularity=8)

        # writes: `load` (whole words) has priority over the write streams
        load = self.load.payload
        m.d.comb += [self.load.ready.eq(self.load_enable),
                     self.loading.eq(self.load_enable & self.load.valid)]
        for wr_in, port in ((self.k_msb_wr, kmw), (self.k_lsb_wr, klw), (self.v_wr, vw)):
            m.d.comb += [wr_in.ready.eq(~self.loading),
                         port.addr.eq(wr_in.payload.addr), port.data.eq(wr_in.payload.data)]
            with m.If(wr_in.valid & ~self.loading):
                m.d.comb += port.en.eq(wr_in.payload.en)
        with m.If(self.loading):
            with m.If(load.addr < N):
                m.d.comb += [kmw.addr.eq(load.addr), klw.addr.eq(load.addr),
                             vw.addr.eq(load.addr)]
                with m.If(load.target == 0):
                    m.d.comb += [kmw.en.eq(-1), klw.en.eq(-1)]
                with m.Else():
                    m.d.comb += vw.en.eq(-1)
                for i in range(M):
                    m.d.comb += [kmw.data[i].eq(load.data[i][LB:]),
                                 klw.data[i].eq(load.data[i][:LB])]
                for i in range(Mv):
                    m.d.comb += vw.data[i].eq(load.data[i])
            with m.Else():
                m.d.comb += self.load_error.eq(1)

        # reads in the run's bank: in a power-of-two buffer the bank's offset is one address
        # bit above every address of the run (n*d/M <= n <= offset): an OR, no carry chain
        def at(addr):
            return (addr | self.offset) if N & (N - 1) == 0 else (addr + self.offset)

        # The read ports are transparent for their write ports: a word read while it is written
        # (the fetch unit fills a V row of a word whose other rows are in use) gives the new
        # bytes, which no run reads before they are complete anyway. Yosys builds the old-data
        # behaviour of a non-transparent port out of block RAM by delaying every write a cycle
        # in the fabric (two flip-flops and a multiplexer per bit, on the path into the
        # multipliers); transparency costs it about half of that.
        vrp = vmem.read_port(transparent_for=(vw,))
        m.d.comb += [vrp.addr.eq(at(self.v_rd.addr)), vrp.en.eq(self.v_rd.en),
                     self.v_rd.data.eq(vrp.data)]

        # K: the MSB plane with the LSB plane (full precision) or the fill
        krm = kmsb.read_port(transparent_for=(kmw,))
        krl = klsb.read_port(transparent_for=(klw,))
        full_read = Signal()        # the word read in the previous cycle: at full precision
        m.d.sync += full_read.eq(self.k_full)
        fill = Mux(self.fill_mid, 1 << (LB - 1), 0)
        m.d.comb += [krm.addr.eq(at(self.k_rd.addr)), krm.en.eq(self.k_rd.en),
                     krl.addr.eq(at(self.k_rd.addr)), krl.en.eq(self.k_rd.en)]
        for e in range(M):
            m.d.comb += self.k_rd.data[e].eq(Cat(Mux(full_read, krl.data[e], fill),
                                                 krm.data[e]))
        return m
