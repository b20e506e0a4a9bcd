"""The FPGA flow: PLL divider search, report parsing, the board harness, and real builds.

Fast tests run by default; `-m synth` selects the two real builds (a few seconds each once the
YoWASP tools are compiled into their cache; the first run compiles them, about 90 s).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import Config, preset
from spatten.fpga import report as rpt
from spatten.fpga.boards import BOARDS, ECP5_VCO, ICE40_VCO, board, ecp5_pll, ice40_pll
from spatten.fpga.build import BUILD_ROOT, build, tool_environment
from spatten.fpga.harness import BoardHarness, dut_port_bits


class LaneAdder(wiring.Component):
    """Tiny DUT: each beat carries `lanes` pairs (a, b); the output beat carries a + b per lane,
    one cycle later (a registered stream stage)."""

    def __init__(self, lanes=4, width=8):
        self.lanes, self.width = lanes, width
        pair = data.StructLayout({"a": width, "b": width})
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(pair, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(width + 1, lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(self.i.valid)
            with m.If(self.i.valid):
                for lane in range(self.lanes):
                    p = self.i.payload[lane]
                    m.d.sync += self.o.payload[lane].eq(p.a + p.b)
        return m


# ---------------------------------------------------------------------------------------------
# PLL divider search

# (target MHz) -> (CLKI_DIV, CLKFB_DIV, CLKOP_DIV, achieved MHz), as yowasp-ecppll -i 25 prints.
ECPPLL_25 = {100: (1, 4, 6, 100.0), 50: (1, 2, 12, 50.0), 65: (5, 13, 9, 65.0),
             75: (1, 3, 8, 75.0), 200: (1, 8, 3, 200.0)}
# (target MHz) -> (DIVR, DIVF, DIVQ, FILTER_RANGE, achieved MHz), as yowasp-icepll -i 12 prints.
ICEPLL_12 = {40: (0, 52, 4, 1, 39.75), 100: (0, 66, 3, 1, 100.5), 50: (0, 66, 4, 1, 50.25),
             75: (0, 49, 3, 1, 75.0), 133: (0, 87, 3, 1, 132.0)}


@pytest.mark.parametrize("mhz", sorted(ECPPLL_25))
def test_ecp5_pll_matches_ecppll(mhz):
    s = ecp5_pll(25, mhz)
    p = s.params
    assert (p["CLKI_DIV"], p["CLKFB_DIV"], p["CLKOP_DIV"], s.f_out_mhz) == ECPPLL_25[mhz]
    assert p["CLKOP_CPHASE"] == p["CLKOP_DIV"] // 2 and p["FEEDBK_PATH"] == "CLKOP"


@pytest.mark.parametrize("mhz", sorted(ICEPLL_12))
def test_ice40_pll_matches_icepll(mhz):
    s = ice40_pll(12, mhz)
    p = s.params
    assert (p["DIVR"], p["DIVF"], p["DIVQ"], p["FILTER_RANGE"], s.f_out_mhz) == ICEPLL_12[mhz]


def _best_error(f_req, settings):
    """Smallest |f_out - f_req| over every (f_out, f_vco, f_pfd) that `settings` yields."""
    return min(abs(f_out - f_req) for f_out in settings)


@pytest.mark.parametrize("mhz", [17, 23.5, 40, 48, 66.6, 100, 120, 150, 200, 250])
def test_pll_settings_are_valid_and_closest(mhz):
    e = ecp5_pll(25, mhz)
    p = e.params
    f_out = 25 / p["CLKI_DIV"] * p["CLKFB_DIV"]
    assert e.f_out_mhz == pytest.approx(f_out)
    assert ECP5_VCO[0] <= f_out * p["CLKOP_DIV"] <= ECP5_VCO[1]
    # brute force over the same divider ranges and limits: nothing is closer
    best = _best_error(mhz, (25 / r * f for r in range(1, 9) for f in range(1, 81)
                                 if any(400 <= 25 / r * f * o <= 800 for o in range(1, 129))))
    assert abs(e.f_out_mhz - mhz) == pytest.approx(best)
    i = ice40_pll(12, mhz)
    p = i.params
    vco = 12 / (p["DIVR"] + 1) * (p["DIVF"] + 1)
    assert ICE40_VCO[0] <= vco <= ICE40_VCO[1]
    assert i.f_out_mhz == pytest.approx(vco / 2 ** p["DIVQ"])
    best = _best_error(mhz, (12 * (f + 1) / 2 ** q for f in range(128) for q in range(1, 7)
                                 if 533 <= 12 * (f + 1) <= 1066))
    assert abs(i.f_out_mhz - mhz) == pytest.approx(best)


def _tool_fields(tool, *args):
    env = {**os.environ, **tool_environment()}
    BUILD_ROOT.mkdir(exist_ok=True)     # the YoWASP tools cannot see /tmp
    out = subprocess.run([Path(sys.executable).parent / tool, *args], env=env, cwd=BUILD_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


@pytest.mark.parametrize("mhz", [20, 40, 62, 100, 133])
def test_pll_search_agrees_with_the_tools(mhz):
    """Cross-check against the real icepll/ecppll of the YoWASP packages (0.1 s each).
    ecppll computes in float32, which can break exact ties between divider sets differently:
    compare its frequencies, not its dividers."""
    fields = _tool_fields("yowasp-icepll", "-i", "12", "-o", str(mhz))
    i = ice40_pll(12, mhz)
    for key in ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE"):
        assert int(fields[key].split()[0]) == i.params[key], (mhz, key, fields)
    fields = _tool_fields("yowasp-ecppll", "-i", "25", "-o", str(mhz))
    e = ecp5_pll(25, mhz)
    assert float(fields["clkout0 frequency"].split()[0]) == pytest.approx(e.f_out_mhz, rel=1e-5)
    # an exact tie may pick the other VCO frequency, equally far from 600 MHz
    assert abs(float(fields["VCO frequency"]) - 600) == pytest.approx(abs(e.f_vco_mhz - 600),
                                                                      abs=1e-3)


def test_pll_rejects_impossible_requests():
    with pytest.raises(ValueError, match="f_out_mhz"):
        ecp5_pll(25, 5)
    with pytest.raises(ValueError, match="f_out_mhz"):
        ice40_pll(12, 300)
    with pytest.raises(TypeError):
        ice40_pll(12, "40")


def test_boards_and_targets():
    assert set(BOARDS) == {"ulx3s-85f", "icebreaker"}
    assert board("ulx3s-85f").target_mhz() == Config().target_mhz["ulx3s-85f"] == 100.0
    assert board("icebreaker").target_mhz(preset("small")) == 40.0
    custom = Config().replace(target_mhz={"icebreaker": 30.0})
    assert board("icebreaker").target_mhz(custom) == 30.0
    with pytest.raises(ValueError, match="no target clock"):
        board("ulx3s-85f").target_mhz(custom)
    with pytest.raises(ValueError, match="icebreaker"):
        board("arty")
    assert board("icebreaker").leds == 2 and board("ulx3s-85f").leds == 8


# ---------------------------------------------------------------------------------------------
# Report parsing (text and JSON shaped like nextpnr 0.11's)

LOG = """\
Info: Max frequency for clock 'clk': 51.04 MHz (FAIL at 100.56 MHz)
Info: Critical path report for clock 'clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  1.39  1.39 Source dut.o__valid_SB_DFFESR_Q_DFFLC.O
Info:    routing  3.06  4.45 Net o__valid (1,23) -> (2,28)
Info:                          Sink out_q_LC.I2
Info:                          Defined in:
Info:                               /x/amaranth/lib/stream.py:49
Info:      logic  1.21  5.65 Source out_q_LC.O
Info:    routing  1.76  7.41 Net out_q_D[1] (2,28) -> (1,29)
Info:                          Sink dut.o__valid_SB_DFFESR_Q_DFFLC.CEN
Info:      setup  0.10  7.51 Source dut.o__valid_SB_DFFESR_Q_DFFLC.CEN
Info: 2.70 ns logic, 4.82 ns routing

Warning: Max frequency for clock 'clk': 59.69 MHz (FAIL at 100.56 MHz)
Info: Max frequency for clock 'other': 300.00 MHz (PASS at 25.00 MHz)
"""

NEXTPNR_REPORT = {
    "fmax": {"clk": {"achieved": 59.69, "constraint": 100.56},
             "other": {"achieved": 300.0, "constraint": 25.0}},
    "utilization": {"ICESTORM_LC": {"available": 5280, "used": 379},
                    "ICESTORM_RAM": {"available": 30, "used": 0},
                    "SB_IO": {"available": 39, "used": 3}},
    "critical_paths": [
        {"from": "posedge clk", "to": "<async>", "path": [
            {"delay": 9.0, "type": "routing", "net": "led",
             "from": {"cell": "f", "port": "O"}, "to": {"cell": "led", "port": "D"}}]},
        {"from": "posedge clk", "to": "posedge clk", "path": [
            {"delay": 1.39, "type": "clk-to-q", "from": {"cell": "a", "port": "Q"},
             "to": {"cell": "a", "port": "Q"}},
            {"delay": 3.06, "type": "routing", "net": "o__valid",
             "from": {"cell": "a", "port": "Q"}, "to": {"cell": "l", "port": "I2"}},
            {"delay": 1.21, "type": "logic", "from": {"cell": "l", "port": "I2"},
             "to": {"cell": "l", "port": "O"}},
            {"delay": 0.10, "type": "setup", "from": {"cell": "b", "port": "CEN"},
             "to": {"cell": "b", "port": "CEN"}}]},
    ],
}

YOSYS_STAT = """\
2.59. Printing statistics.
=== top ===
       10 cells
      241   SB_LUT4
=== design hierarchy ===
      402 wires
       10 cells
        7   $scopeinfo
        1   SB_PLL40_PAD
       68   SB_CARRY
      242   SB_DFF
       76   SB_DFFESR
      241   SB_LUT4

2.60. Executing CHECK pass (checking for obvious problems).
      999   SB_LUT4
"""


def test_parse_fmax_log_keeps_the_last_line_per_clock():
    fmax = rpt.parse_fmax_log(LOG)
    assert fmax["clk"] == {"achieved": 59.69, "constraint": 100.56, "pass": False}
    assert fmax["other"]["pass"] is True


def test_parse_nextpnr_report():
    parsed = rpt.parse_nextpnr(NEXTPNR_REPORT, LOG)
    assert parsed["fmax"]["clk"]["pass"] is False and parsed["fmax"]["other"]["pass"] is True
    assert parsed["utilization"]["ICESTORM_LC"] == {"used": 379, "available": 5280}
    path = parsed["critical_paths"]["clk"]
    assert path[0].startswith("5.76 ns in 4 steps")
    assert path[1] == "source: a.Q" and path[2] == "sink:   b.CEN"
    assert path[3] == "clk-to-q 1.39 ns: a"     # segments in path order
    assert any("routing 3.06 ns: o__valid" in line for line in path)
    assert parsed["critical_paths"]["other"] == []


def test_critical_path_from_log():
    lines = rpt.critical_path_from_log(LOG, "clk")
    assert lines[0].startswith("7.52 ns in 5 steps (2.70 ns logic, 4.82 ns routing)")
    assert lines[1] == "source: dut.o__valid_SB_DFFESR_Q_DFFLC.O"
    assert lines[2] == "sink:   dut.o__valid_SB_DFFESR_Q_DFFLC.CEN"
    assert lines[3:5] == ["clk-to-q 1.39 ns: dut.o__valid_SB_DFFESR_Q_DFFLC.O",
                          "routing 3.06 ns: o__valid"]
    assert len(lines) == 3 + rpt.PATH_SEGMENTS
    assert rpt.critical_path_from_log(LOG, "nope") == []
    # without a JSON critical path, parse_nextpnr falls back to the log
    no_paths = {k: v for k, v in NEXTPNR_REPORT.items() if k != "critical_paths"}
    assert rpt.parse_nextpnr(no_paths, LOG)["critical_paths"]["clk"] == lines


def test_congestion_by_unit():
    text = ("dut.unit.pv.F3[2],30\ndut.unit.pv.mul1.port$5$7,10\ndut.unit.qk.p[1],40\n"
            "rst,20\nnot,a number\n")
    assert rpt.congestion_by_unit(text) == [("dut.unit.pv", 40, 0.4), ("dut.unit.qk", 40, 0.4),
                                            ("rst", 20, 0.2)]
    assert rpt.congestion_by_unit(text, depth=4)[0] == ("dut.unit.qk.p[1]", 40, 0.4)


def test_yosys_stat_and_summary():
    cells = rpt.parse_yosys_stat(YOSYS_STAT)
    assert cells["SB_LUT4"] == 241 and cells["SB_DFFESR"] == 76 and "$scopeinfo" not in cells
    assert rpt.synth_summary(cells) == {"LUT4": 241, "FF": 318, "carry": 68}


def test_format_table():
    report = {"top": "t", "board": "icebreaker", "device": "iCE40UP5K-SG48", "family": "ice40",
              "config": "small", "target_mhz": 40.0,
              "fmax_mhz": {"sync": {"achieved": 35.0, "constraint": 39.76}},
              "utilization": {"ICESTORM_LC": {"used": 528, "available": 5280},
                              "ICESTORM_DSP": {"used": 0, "available": 8},
                              "ICESTORM_RAM": {"used": 3, "available": 30}},
              "critical_path": ["28.6 ns", "source: a.Q"]}
    table = rpt.format_table(report)
    lines = table.splitlines()
    sync = next(line for line in lines if line.startswith("sync"))
    assert sync.split() == ["sync", "35.00", "39.76", "40.00", "FAIL"]
    lc = next(line for line in lines if line.startswith("ICESTORM_LC"))
    assert lc.split() == ["ICESTORM_LC", "528", "5280", "10.0%"]
    assert any(line.startswith("ICESTORM_RAM") for line in lines)
    assert not any(line.startswith("ICESTORM_DSP") for line in lines)   # unused: no row
    assert "  source: a.Q" in lines and "config small" in lines[0]


# router2's overused wires per iteration in real builds of the query pipeline on the ECP5-85F
# (nextpnr logs): the half-size pipeline that routed at iteration 70, one with seed 5 that came
# down to 978 and climbed again, and one at the default size that stalled near 7.3k (stopped
# by hand after 18 iterations)
ROUTED_70 = [55330, 33386, 20935, 12796, 8596, 5949, 4287, 3192, 2327, 1781, 1390, 1078, 849, 644,
             531, 419, 306, 267, 223, 189, 157, 142, 103, 112, 119, 90, 78, 54, 54, 40, 34, 32,
             26, 23, 22, 23, 22, 18, 13, 12, 10, 7, 12, 8, 6, 5, 3, 3, 3, 2, 4, 6, 4, 3, 2, 2, 2,
             2, 1, 1, 1, 1, 1, 2, 4, 5, 2, 1, 2, 0]
DIVERGED = [53156, 33207, 21580, 13966, 9683, 7354, 5572, 4520, 3689, 3184, 2873, 2605, 2301, 2013,
            1764, 1668, 1409, 1272, 1140, 1078, 1157, 1140, 1105, 1114, 1085, 978, 1013, 1115,
            1191, 1165, 1207, 1242, 1313, 1311, 1408, 1583, 1735, 2022, 2155, 2233, 2333]
STALLED = [74706, 47783, 32270, 23017, 18149, 14209, 12266, 10886, 10032, 8983, 8473, 7860, 7452,
           7527, 7283, 7278, 7440, 7738]


def test_router2_stall_rule():
    def first_stop(overused, patience=12):
        return next((i for i in range(1, len(overused) + 1)
                     if rpt.router2_stalled(overused[:i], patience)), None)

    assert first_stop(ROUTED_70) is None            # lingers at 1-2 wires, then routes
    assert first_stop(ROUTED_70, patience=3) is None
    assert first_stop(DIVERGED) == 32               # best 978 at 26, only 9 % below 1078 (20)
    assert first_stop(STALLED) is None              # 18 iterations: too few for 12
    assert first_stop(STALLED, patience=6) == 18    # best 7278 (16) > 0.9 x 7860 (first 12)
    assert first_stop(DIVERGED, patience=0) is None  # 0: never stop
    assert not rpt.router2_stalled([5000] * 12, 12) and rpt.router2_stalled([5000] * 13, 12)
    assert not rpt.router2_stalled([199] * 40, 12)  # below the floor: let it finish


def test_router2_and_utilization_from_the_log():
    log = ("Info: Device utilisation:\n"
           "Info: \t          TRELLIS_IO:     9/   365     2%\n"
           "Info: \t        TRELLIS_COMB: 43758/ 83640    52%\n"
           "Info: \t          MULT18X18D:   139/   156    89%\n"
           "Info: \n"
           "Info: Placed 10 cells\n"
           "Info: Max frequency for clock '$glbnet$clk': 49.10 MHz (FAIL at 100.00 MHz)\n"
           "Info:     iter=1 wires=750000 overused=68483 overuse=80000 archfail=NA\n"
           "Info:     iter=2 wires=760000 overused=42785 overuse=50000 archfail=NA\n")
    assert rpt.parse_router2(log) == [68483, 42785]
    assert rpt.parse_utilization_log(log) == {
        "TRELLIS_IO": {"used": 9, "available": 365},
        "TRELLIS_COMB": {"used": 43758, "available": 83640},
        "MULT18X18D": {"used": 139, "available": 156}}
    assert rpt.parse_router2("no routing yet") == [] and rpt.parse_utilization_log("") == {}


def test_stalled_nextpnr_is_stopped(tmp_path):
    """`fpga.pins._watched` stops a process whose log shows router2 stalled, and says so in the
    log. The process is a stand-in (a real stall takes an hour): a script that writes router2's
    iteration lines into its --log file and would then sleep for ten minutes."""
    from spatten.fpga import pins

    script = tmp_path / "fake_nextpnr.py"
    script.write_text(
        "import os, sys, time\n"
        "log = sys.argv[sys.argv.index('--log') + 1]\n"
        "open(log + '.pid', 'w').write(str(os.getpid()))\n"
        "with open(log, 'w') as f:\n"
        "    for i, o in enumerate([9000, 5000] + [4000] * 20):\n"
        "        f.write(f'Info:     iter={i + 1} wires=1 overused={o} overuse=1\\n')\n"
        "time.sleep(600)\n")
    log = tmp_path / "x.tim"
    t0 = time.time()
    status = pins._watched(sys.executable, [str(script), "--router", "router2", "--log", str(log)],
                           str(log), patience=12, poll=0.2)
    assert status == 3 and time.time() - t0 < 60
    with pytest.raises(ProcessLookupError):           # stopped, not left running
        os.kill(int((tmp_path / "x.tim.pid").read_text()), 0)
    text = log.read_text()
    assert pins.STALL_MARK in text and "fewest overused wires 4000 (iteration 3)" in text
    # a process that ends by itself: its own status
    done = tmp_path / "done.py"
    done.write_text("import sys; sys.exit(5)\n")
    assert pins._watched(sys.executable, [str(done), "--log", str(log)], str(log), 12,
                         poll=0.2) == 5


def test_tables_of_a_build_that_did_not_route():
    from spatten.results import synth_table

    report = {"top": "attention_fed", "board": "ulx3s-85f", "device": "LFE5U-85F",
              "family": "ecp5", "config": "default", "target_mhz": 100.0, "fmax_mhz": {},
              "routed": False, "router2_overused": [9000, 5000, 4100, 4000, 4050],
              "placer_estimate_mhz": {"sync": 49.1},
              "utilization": {"TRELLIS_COMB": {"used": 43758, "available": 83640}}}
    table = rpt.format_table(report)
    assert table.splitlines()[1].startswith(
        "NOT ROUTED: router2 stalled (4000 overused wires at best, iteration 4 of 5)")
    assert "estimate after placement 49.10 MHz" in table
    assert table.splitlines()[2].split() == ["cell", "used", "available", "percent"]   # no Fmax
    row = synth_table([report]).splitlines()[-1]
    assert "| not routed (4.0k wires overused; placer estimate 49.1) | 100.0 |" in row
    assert row.endswith("| LUT4 + carry (TRELLIS_COMB) 43758 / 83640 | (not recorded) |")
    report["source"] = {"commit": "0123456789ab", "modified": True}
    assert synth_table([report]).splitlines()[-1].endswith("| 0123456789ab (modified) |")


def test_build_records_its_source():
    """A build records the commit it elaborates, and whether hw/, spatten/ or fpga/ differ."""
    from spatten.fpga.build import _source

    src = _source()
    if src is None:
        pytest.skip("not a git checkout")
    assert len(src["commit"]) == 12 and int(src["commit"], 16) >= 0
    assert isinstance(src["modified"], bool)


# ---------------------------------------------------------------------------------------------
# Harness (elaboration only: no tools)

def test_harness_counts_every_port_bit():
    h = BoardHarness(LaneAdder, board="icebreaker")
    rtlil.convert(h, platform=board("icebreaker").make_platform())
    inputs, outputs = dut_port_bits(h.dut)
    assert [n for n, _ in inputs] == ["i.payload", "i.valid", "o.ready"]
    assert [n for n, _ in outputs] == ["i.ready", "o.payload", "o.valid"]
    assert (h.in_bits, h.out_bits) == (4 * 16 + 2, 1 + 4 * 9 + 1)
    assert h.pll.f_out_mhz == 39.75


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_harness_elaborates_on_each_board(name):
    b = board(name)
    text = rtlil.convert(BoardHarness(LaneAdder, board=b), platform=b.make_platform())
    assert ("EHXPLLL" if b.family == "ecp5" else "SB_PLL40_PAD") in text
    assert f"led_{b.leds - 1}__io" in text and f"led_{b.leds}__io" not in text


def test_fed_drives_wide_inputs_from_its_shift_register():
    """`hw.tops.Fed`: a payload wider than `narrow` is the low bits of a shift register of its
    own that takes `beat` (the k-th register: rotated left by 7k bits) when `beat_valid` is high;
    narrow members stay ports under their names."""
    from amaranth.sim import Simulator

    from spatten.hw.tops import Fed

    class Wide(wiring.Component):
        i: In(stream.Signature(40))
        w: In(24)
        o: Out(40)
        p: Out(24)
        k: In(3)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += [self.o.eq(self.i.payload), self.p.eq(self.w)]
            return m

    top = Fed(Wide(), width=16, narrow=8)
    names = [n for n, _ in dut_port_bits(top)[0]]
    assert names == ["beat", "beat_valid", "i__valid", "k"] and top.wide_bits == 40
    # members left idle: no ports, no shift register (the unit's input keeps its reset value)
    idle = Fed(Wide(), width=16, narrow=8, unused=("i", "o"))
    assert [n for n, _ in dut_port_bits(idle)[0]] == ["beat", "beat_valid", "k"]
    assert [n for n, _ in dut_port_bits(idle)[1]] == ["p"] and idle.wide_bits == 24
    assert "sr0" in rtlil.convert(idle) and "sr1" not in rtlil.convert(idle)
    for bad in (("x",), "i"):
        unit = Wide()
        unit._MustUse__silence = True
        with pytest.raises(ValueError, match="unused must be a tuple of the unit's member names"):
            Fed(unit, width=16, narrow=8, unused=bad)
    seen = []

    async def tb(ctx):
        for word in (0x1111, 0x2222, 0x3333):
            ctx.set(top.beat, word)
            ctx.set(top.beat_valid, 1)
            await ctx.tick()
        ctx.set(top.beat_valid, 0)
        await ctx.tick()
        seen.append(ctx.get(top.unit.o))
        seen.append(ctx.get(top.unit.p))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    # a 40-bit register shifted right by 16 three times: 0x3333 on top, 0x2222 below it, then
    # the top 8 bits of 0x1111
    # the 24-bit input has a 24-bit register of its own, fed the beat rotated left by 7 bits:
    # 0x3333 on top of 0x2222's top byte
    def rot(x):
        return ((x << 7) | (x >> 9)) & 0xFFFF
    assert seen == [(0x3333 << 24) | (0x2222 << 8) | 0x11, (rot(0x3333) << 8) | (rot(0x2222) >> 8)]


def test_harness_rejects_bad_duts():
    class NoOutputs(wiring.Component):
        a: In(4)

        def elaborate(self, platform):
            return Module()

    with pytest.raises(ValueError, match="no output"):
        BoardHarness(NoOutputs, board="icebreaker")
    with pytest.raises(TypeError, match="wiring.Component"):
        BoardHarness(lambda: {}, board="icebreaker")


def test_build_rejects_tmp_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match="cannot see"):
        build("icebreaker", LaneAdder, name="x", out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="letters"):
        build("icebreaker", LaneAdder, name="a-b", out_dir=BUILD_ROOT / "x", progress=False)
    with pytest.raises(ValueError, match="router2"):
        build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
              heatmaps=True)
    with pytest.raises(ValueError, match="plain options"):
        build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
              nextpnr_opts="--seed 1; rm -rf x")
    with pytest.raises(ValueError, match="plain options"):
        build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
              nextpnr_opts="--log > /etc/x")
    for density in (0.1, 1.5, "0.7", True):
        with pytest.raises(ValueError, match="density"):
            build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
                  density=density)
    with pytest.raises(ValueError, match="placer must be"):
        build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
              placer="sa")
    with pytest.raises(ValueError, match="heap placer"):
        build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
              placer="static", density=0.7)
    for patience in (-1, True, "3"):
        with pytest.raises(ValueError, match="patience must be a non-negative integer"):
            build("icebreaker", LaneAdder, name="x", out_dir=BUILD_ROOT / "x", progress=False,
                  patience=patience)


# ---------------------------------------------------------------------------------------------
# Real builds

def _out_dir(board_name):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return BUILD_ROOT / "test-fpga" / f"{board_name}-{worker}"


@pytest.mark.synth
@pytest.mark.parametrize("name", ["ulx3s-85f", "icebreaker"])
def test_build_tiny_design(name):
    cfg = preset("small")
    report = build(name, LaneAdder, name="lane_adder", out_dir=_out_dir(name), config=cfg,
                   progress=False)
    print(rpt.format_table(report))
    target = cfg.target_mhz[name]
    sync = report["fmax_mhz"]["sync"]
    assert sync["constraint"] == pytest.approx(target, rel=0.01)
    assert sync["achieved"] > 0
    assert report["target_mhz"] == target and report["config"] == "small"
    util = report["utilization"]
    if board(name).family == "ecp5":
        assert util["TRELLIS_COMB"]["used"] > 0 and util["TRELLIS_FF"]["used"] > 0
        assert util["DP16KD"] == {"used": 0, "available": 208}
    else:
        assert util["ICESTORM_LC"]["used"] > 0
    # the DUT survived: at least its 4 x 9 output flip-flops plus the harness's 2 per output bit
    assert report["synth"]["FF"] >= 36 + 2 * report["dut_bits"]["out"]
    assert report["synth"]["carry"] > 0          # the adders are there
    assert Path(report["bitstream"]).stat().st_size > 0
    on_disk = json.loads((Path(report["build_dir"]) / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert ("critical_path" in report) == (not report["timing_met"])
    assert report["routed"] is True
    # no source locations (they hold the checkout's path)
    netlist = (Path(report["build_dir"]) / "lane_adder.il").read_text()
    assert "attribute \\src" not in netlist and str(BUILD_ROOT.parent) not in netlist


@pytest.mark.synth
def test_build_reports_the_critical_path_when_timing_fails(capsys):
    # 100 MHz is beyond what the iCE40 reaches through the 9-bit adders' carry chains (~68)
    report = build("icebreaker", LaneAdder, name="lane_adder_fast", mhz=100,
                   out_dir=_out_dir("icebreaker-100"), progress=True)
    sync = report["fmax_mhz"]["sync"]
    assert report["pll"]["f_out_mhz"] == 100.5
    assert sync["constraint"] == pytest.approx(100, rel=0.01)
    assert sync["achieved"] < sync["constraint"] and report["timing_met"] is False
    path = report["critical_path"]
    assert path[0].split()[1] == "ns" and float(path[0].split()[0]) > 1000 / 100.5
    assert path[1].startswith("source: ") and path[2].startswith("sink:   ")
    assert len(path) > 3
    err = capsys.readouterr().err
    assert "icebreaker lane_adder_fast: done" in err     # the spinner's last state
    assert "FAIL" in err and "critical path (sync):" in err


@pytest.mark.synth
def test_build_topk_small_on_icebreaker():
    """The real engine through the real flow: `spatten synth --board icebreaker --top topk
    --config small`, report with Fmax and utilization, and the engine fits the UP5K."""
    from spatten.cli import main

    out = _out_dir("icebreaker-topk")
    assert main(["synth", "--board", "icebreaker", "--top", "topk", "--config", "small",
                 "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["top"] == "topk" and report["config"] == "small"
    assert report["fmax_mhz"]["sync"]["achieved"] > 0
    lc = report["utilization"]["ICESTORM_LC"]
    assert 1000 < lc["used"] <= lc["available"]
    assert report["utilization"]["ICESTORM_RAM"]["used"] >= 3   # buffers A, B, C


# ---------------------------------------------------------------------------------------------
# Floorplan: the query pipeline's multipliers on the ECP5-85F

def test_attention_floorplan_pins_each_array_in_its_own_rows():
    from spatten.fpga.floorplan import (
        ECP5_85F_DSP_ROWS,
        attention_bels,
        attention_pins,
        bel_column,
        dsp_sites,
        pv_lane_order,
        top_pins,
    )

    cfg = Config().attention
    bels = attention_bels(cfg, "dut.unit")
    every_site = [s for y in ECP5_85F_DSP_ROWS for s in dsp_sites(y)]
    assert len(every_site) == len(set(every_site)) == 156
    assert len(set(bels.values())) == len(bels) and set(bels.values()) <= set(every_site)
    qk = {int(k.split(".")[-2][3:]): v for k, v in bels.items() if ".qk.mul" in k}
    pv = {int(k.split(".")[-2][3:]): v for k, v in bels.items() if ".pv.mul" in k}
    lane = [v for k, v in bels.items() if ".pv.lane_mul" in k]
    assert sorted(qk) == list(range(cfg.qk_mults)) and sorted(pv) == list(range(cfg.pv_mults))
    assert len(lane) == 3              # chunks of 17 bits of the 38-bit sum

    def row(site):
        return int(site.split("/")[1][1:])

    col = bel_column
    # Q.K: 48 lanes (three whole 16-lane subtrees) in row 10 in lane order, 16 in row 34
    assert [row(qk[e]) for e in range(64)] == [10] * 48 + [34] * 16
    assert all(col(qk[e]) < col(qk[e + 1]) for e in range(47))
    # prob x V: each fold group {g, g + 8, .., g + 56} on 8 neighbouring sites of one row,
    # six groups in row 58, two in row 34, away from the Q.K lanes there
    order = pv_lane_order(64)
    assert sorted(order) == list(range(64)) and order[:8] == list(range(0, 64, 8))
    for g in range(8):
        sites = [pv[g + 8 * t] for t in range(8)]
        assert len({row(s) for s in sites}) == 1
        assert max(map(col, sites)) - min(map(col, sites)) <= 20
    assert sorted({row(pv[e]) for e in range(64)}) == [34, 58]
    assert min(col(pv[e]) for e in range(64) if row(pv[e]) == 34) > max(
        col(qk[e]) for e in range(48, 64))
    assert top_pins("attention", cfg, "ulx3s-85f") == attention_pins(cfg, "dut")
    assert top_pins("attention", cfg, "ulx3s-85f")["bels"] == attention_bels(cfg, "dut")
    assert top_pins("attention", cfg, "icebreaker") == {} and top_pins("topk", cfg,
                                                                       "ulx3s-85f") == {}
    with pytest.raises(ValueError, match="do not fit"):
        attention_bels(dataclasses.replace(cfg, qk_mults=128, pv_mults=128), "dut")
    with pytest.raises(ValueError, match="multiplier rows"):
        dsp_sites(11)


class _Ecp5:
    """Just enough of an ECP5 platform for the units to instantiate their ECP5 primitives."""
    family = "ecp5"


def _flattened_names(text: str) -> tuple[dict, set]:
    """From RTLIL of a design whose top is ``top``: {hierarchical name: cell type} of every
    instance cell and the hierarchical names of every memory, as Yosys names them once the
    design is flattened (``qk.mul0.dsp``: the path of submodule names, then the cell's)."""
    cells, memories, path = {}, set(), None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["module"]:
            path = words[1].lstrip("\\").removeprefix("top").lstrip(".")
        elif words[:1] == ["cell"] and not words[1].startswith("$"):
            cells[".".join(filter(None, (path, words[2].lstrip("\\"))))] = words[1].lstrip("\\")
        elif words[:1] == ["memory"]:
            memories.add(".".join(filter(None, (path, words[-1].lstrip("\\")))))
    return cells, memories


def test_attention_floorplan_names_are_cells_of_the_design():
    """Every multiplier `attention_bels` pins is a MULT18X18D of that name in the pipeline as
    elaborated for an ECP5, and every block-RAM rule of `attention_pins` matches a memory."""
    import re

    from spatten.fpga.floorplan import attention_pins
    from spatten.hw.attention.attention import Attention

    cfg = preset("small")
    cells, memories = _flattened_names(rtlil.convert(Attention(config=cfg), name="top",
                                                     platform=_Ecp5()))
    pins = attention_pins(cfg.attention, "dut")
    assert len(pins["bels"]) == cfg.attention.qk_mults + cfg.attention.pv_mults + 3
    for name in pins["bels"]:
        assert cells.get(name.removeprefix("dut.")) == "MULT18X18D", name
    for rule in pins["rows"]:
        # the block RAMs of memory X are named X.0.<k> once mapped
        assert any(re.fullmatch(rule["regex"], f"dut.{mem}.0.0") for mem in memories), \
            rule["regex"]


class OneMult(wiring.Component):
    """Tiny DUT: one `hw.common.dsp.Multiplier` (a registered MULT18X18D on the ECP5)."""

    def __init__(self):
        super().__init__({"a": In(signed(12)), "b": In(signed(12)), "p": Out(signed(24))})

    def elaborate(self, platform):
        from spatten.hw.common.dsp import Multiplier

        m = Module()
        m.submodules.mul = mul = Multiplier(a_shape=signed(12), b_shape=signed(12))
        m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.b), self.p.eq(mul.p)]
        return m


@pytest.mark.synth
def test_build_pins_cells_and_refuses_unknown_names():
    from spatten.fpga.build import BuildError

    out = _out_dir("ulx3s-85f-pin")
    report = build("ulx3s-85f", OneMult, name="one_mult", out_dir=out, progress=False,
                   pins={"bels": {"dut.mul.dsp": "X119/Y58/MULT18_5"}})
    assert report["utilization"]["MULT18X18D"]["used"] == 1
    netlist = json.loads((out / "one_mult.json").read_text())
    cells = netlist["modules"]["one_mult"]["cells"]
    assert cells["dut.mul.dsp"]["attributes"]["BEL"] == "X119/Y58/MULT18_5"
    with pytest.raises(BuildError, match="one_mult"):
        build("ulx3s-85f", OneMult, name="one_mult", out_dir=out, progress=False,
              pins={"bels": {"dut.no_such_cell": "X119/Y58/MULT18_5"}})
    with pytest.raises(ValueError, match="ECP5 only"):
        build("icebreaker", OneMult, name="one_mult", out_dir=out, progress=False,
              pins={"bels": {"dut.mul.dsp": "X119/Y58/MULT18_5"}})


def test_pins_put_block_rams_near_their_columns_in_order():
    from spatten.fpga.floorplan import bel_column, ebr_sites
    from spatten.fpga.pins import apply_pins

    def netlist(n):
        cells = {f"u.mem.0.{k}": {"type": "DP16KD"} for k in range(n)}
        cells["u.mul.dsp"] = {"type": "MULT18X18D"}
        cells["u.other.0.1"] = {"type": "TRELLIS_COMB"}
        return {"modules": {"lib": {"cells": {}},
                            "top": {"attributes": {"top": "00000000000000000000000000000001"},
                                    "cells": cells}}}

    net = netlist(6)
    # blocks 0..5 of a memory whose bits are used at columns 100 down to 0: block 0 rightmost
    placed = apply_pins(net, {"bels": {"u.mul.dsp": "X4/Y10/MULT18_0"},
                              "rows": [{"regex": r"u\.mem\.0\.(\d+)", "row": 46,
                                        "targets": [100, 80, 60, 40, 20, 0]}]})
    cells = net["modules"]["top"]["cells"]
    assert cells["u.mul.dsp"]["attributes"]["BEL"] == "X4/Y10/MULT18_0"
    cols = [int(placed[f"u.mem.0.{k}"].split("/")[0][1:]) for k in range(6)]
    assert cols == sorted(cols, reverse=True) and len(set(placed.values())) == 7
    assert all(abs(c - t) <= 2 for c, t in zip(cols, [100, 80, 60, 40, 20, 0][:5], strict=False))
    assert all(placed[f"u.mem.0.{k}"] in ebr_sites(46) for k in range(6))
    assert "attributes" not in cells["u.other.0.1"]
    # two rules share a row without sharing a site
    net = netlist(30)
    placed = apply_pins(net, {"rows": [
        {"regex": r"u\.mem\.0\.([0-9])", "row": 22, "targets": [60]},
        {"regex": r"u\.mem\.0\.(\d\d)", "row": 22, "targets": [60]}]})
    assert len(placed) == 30 and len(set(placed.values())) == 30
    # blocks ranked by index, then name: equal indices (copies of a memory per read port, or
    # several memories under one rule) still spread over the targets; a pinned cell keeps its site
    net = netlist(1)
    net["modules"]["top"]["cells"]["u.rom.1.0"] = {"type": "DP16KD"}
    net["modules"]["top"]["cells"]["u.rom.0.0"] = {"type": "DP16KD"}
    placed = apply_pins(net, {"bels": {"u.mem.0.0": "X4/Y70/EBR0"}, "rows": [
        {"regex": r"u\.(?:rom|mem)\.\d\.(\d+)", "row": 70, "targets": [10, 110]}]})
    assert placed["u.mem.0.0"] == "X4/Y70/EBR0"
    assert abs(bel_column(placed["u.rom.0.0"]) - 10) <= 2
    assert abs(bel_column(placed["u.rom.1.0"]) - 110) <= 2
    with pytest.raises(ValueError, match="no cell named"):
        apply_pins(netlist(2), {"bels": {"u.nope": "X4/Y10/MULT18_0"}})
    with pytest.raises(ValueError, match="no block RAM matches"):
        apply_pins(netlist(2), {"rows": [{"regex": r"v\.(\d+)", "row": 22, "targets": [0]}]})
    with pytest.raises(ValueError, match="free block-RAM sites"):
        apply_pins(netlist(60), {"rows": [{"regex": r"u\.mem\.0\.(\d+)", "row": 22,
                                           "targets": [0]}]})
