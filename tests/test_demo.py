"""`spatten demo` reports every check as passed, FAILED or MISSED, with its figures, in the
terminal and in build/demo/summary.json; a missed timing target is reported (exit status 0), a
bit mismatch fails (status 1). The simulator and the FPGA build are replaced by fakes here (the
real ones run in tests/test_topk.py and tests/test_fpga.py)."""

import json

import pytest

import spatten.fpga.build
import spatten.hw.tops
import spatten.sim.infra.runner
import spatten.sim.testbenches.tb_topk
from spatten import demo
from spatten.golden import topk as golden


def _golden_run(cfg, jobs, **_):
    """What a correct engine returns for `jobs`: the golden selection, the model's cycles."""
    out = []
    for job in jobs:
        select = golden.select if job["mode"] == "exact" else golden.select_statistical
        ref = select(cfg, job["values"], job["k"])
        model = golden.cycle_model(cfg, job["values"], job["k"], job["mode"])
        out.append({"indices": ref.indices.tolist(), "threshold": int(ref.threshold),
                    "select_cycles": model["select"], "total_cycles": model["total"]})
    return out


def _report(achieved, constraint=100.0):
    return {"board": "ulx3s-85f", "top": "topk", "target_mhz": 100.0,
            "fmax_mhz": {"sync": {"achieved": achieved, "constraint": constraint}},
            "timing_met": achieved >= constraint, "routed": True,
            "utilization": {"TRELLIS_COMB": {"used": 12000, "available": 83640}},
            "bitstream": "build/synth/ulx3s-85f-topk-default/topk.bit"}


@pytest.fixture
def fake_tools(monkeypatch, tmp_path):
    """The demo with a golden engine and a build that reports `state["fmax"]` MHz."""
    state = {"fmax": 91.7, "run": _golden_run}

    def make_top(top, config):
        # a stand-in: an Amaranth component never elaborated warns (UnusedElaboratable)
        return ("top", top, config.name)

    def emit_verilog(component, name, out_dir):
        assert component == ("top", "topk", "default")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.v"
        path.write_text("module topk; endmodule\n")
        return path

    def build(board, make_dut, *, name, out_dir, config, **_):
        assert board == "ulx3s-85f" and name == "topk" and config.name == "default"
        assert make_dut() == ("top", "topk", "default")
        return _report(state["fmax"])

    monkeypatch.setattr(spatten.hw.tops, "make_top", make_top)
    monkeypatch.setattr(spatten.sim.infra.runner, "emit_verilog", emit_verilog)
    monkeypatch.setattr(spatten.sim.testbenches.tb_topk, "run_topk",
                        lambda *a, **k: state["run"](*a, **k))
    monkeypatch.setattr(spatten.fpga.build, "build", build)
    return state, tmp_path


def _summary(tmp_path):
    return json.loads((tmp_path / "demo" / "summary.json").read_text())


def test_missed_fmax_is_reported_not_passed(fake_tools, capsys):
    state, tmp_path = fake_tools
    assert demo.main(build_dir=tmp_path) == 0          # a missed target is a result
    out = capsys.readouterr().out
    assert "all checks passed" not in out and "all 4 checks passed" not in out
    assert "[MISSED] ulx3s-85f topk timing: Fmax 91.7 MHz, target 100.0 MHz" in out
    assert "[passed] exact top-k vs golden model" in out
    assert "[passed] cycle counts vs cycle model" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("done in ")
    assert ("3 of 4 checks passed, MISSED: ulx3s-85f topk timing (Fmax 91.7 MHz, target "
            "100.0 MHz), the RTL checks all passed") in last
    s = _summary(tmp_path)
    assert s["all_met"] is False and s["exit_status"] == 0
    met = {c["name"]: c["met"] for c in s["checks"]}
    assert met == {"exact top-k vs golden model": True,
                   "statistical top-k vs golden model": True,
                   "cycle counts vs cycle model": True,
                   "ulx3s-85f topk timing": False}
    timing = s["checks"][-1]
    assert timing["achieved"] == 91.7 and timing["target"] == 100.0 and timing["kind"] == "target"


def test_all_met(fake_tools, capsys):
    state, tmp_path = fake_tools
    state["fmax"] = 104.2
    assert demo.main(build_dir=tmp_path) == 0
    out = capsys.readouterr().out
    assert "[passed] ulx3s-85f topk timing: Fmax 104.2 MHz, target 100.0 MHz" in out
    assert "all 4 checks passed" in out.strip().splitlines()[-1]
    assert "MISSED" not in out and "FAILED" not in out
    s = _summary(tmp_path)
    assert s["all_met"] is True and all(c["met"] for c in s["checks"])


def test_bit_mismatch_fails(fake_tools, capsys):
    """One index off and one cycle more: both RTL checks FAILED with their figures, status 1."""
    state, tmp_path = fake_tools

    def wrong(cfg, jobs, **kw):
        res = _golden_run(cfg, jobs)
        picked = res[0]["indices"]
        outside = next(i for i in range(len(jobs[0]["values"])) if i not in picked)
        res[0]["indices"] = sorted(picked[1:] + [outside])
        res[1]["total_cycles"] += 1
        return res

    state["run"] = wrong
    assert demo.main(skip_synth=True, build_dir=tmp_path) == 1
    out = capsys.readouterr().out
    assert "[FAILED] exact top-k vs golden model" in out
    assert "1 of the golden indices not selected" in out
    assert "[FAILED] cycle counts vs cycle model" in out and "; cycle model exact" in out
    assert "[passed] statistical top-k vs golden model" in out
    last = out.strip().splitlines()[-1]
    assert "1 of 3 checks passed, FAILED: exact top-k vs golden model" in last
    assert "all checks passed" not in out and "the RTL checks all passed" not in last
    s = _summary(tmp_path)
    assert s["all_met"] is False and s["exit_status"] == 1
    assert [c["met"] for c in s["checks"]] == [False, True, False]


def test_timing_check_of_a_build_that_did_not_route():
    rep = {**_report(0.0), "fmax_mhz": {}, "timing_met": None, "routed": False}
    check = demo.timing_check(rep)
    assert check.met is False and check.verdict == "MISSED" and check.achieved is None
    assert check.detail == "not routed, target 100.0 MHz"


def test_check_parameters():
    with pytest.raises(ValueError, match="kind must be one of rtl, target, not 'fmax'"):
        demo.Check("x", "fmax", True, 1, 1, "")
    with pytest.raises(TypeError, match="met must be a bool"):
        demo.Check("x", "rtl", 1, 1, 1, "")
