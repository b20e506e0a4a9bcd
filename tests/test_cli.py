"""The `spatten` command: help on every subcommand, clear one-line errors on bad input, and a
real run of `spatten topk` and `spatten verilog` on the small configuration."""

import json
import subprocess
import sys

import numpy as np
import pytest

from spatten.cli import build_parser, main

SUBCOMMANDS = ["verilog", "topk", "attention", "bench", "synth", "demo", "results"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "spatten.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_help_everywhere():
    r = run_cli("--help")
    assert r.returncode == 0 and "COMMAND" in r.stdout
    for sub in SUBCOMMANDS:
        r = run_cli(sub, "--help")
        assert r.returncode == 0, sub
        assert "usage: spatten " + sub in r.stdout


@pytest.mark.parametrize("values,k,extra,msg", [
    (np.array([1.5, 2.0]), 1, [], "expected an integer array"),
    (np.array([1, 1 << 13]), 1, [], "does not fit 12 signed bits"),
    (np.array([1, 2, 3]), 4, [], "k = 4 is out of range"),
    (np.arange(300), 4, [], "over the capacity 256"),
    (np.zeros((2, 2), int), 1, [], "expected a 1-D array"),
    (np.array([1, 2]), 1, ["--config", "nope"], "unknown configuration 'nope'"),
])
def test_topk_bad_input_is_one_line(tmp_path, capsys, values, k, extra, msg):
    path = tmp_path / "v.npy"
    np.save(path, values)
    rc = main(["topk", "--input", str(path), "--k", str(k), "--config", "small", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and err.count("\n") == 1, err


def test_topk_missing_file(capsys):
    assert main(["topk", "--input", "/nonexistent.npy", "--k", "1"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_topk_runs_rtl_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(5)
    values = rng.integers(-2048, 2048, 77)
    np.save(tmp_path / "v.npy", values)
    out = tmp_path / "r.json"
    rc = main(["topk", "--input", str(tmp_path / "v.npy"), "--k", "20", "--config", "small",
               "--json", str(out)])
    assert rc == 0, capsys.readouterr()
    r = json.loads(out.read_text())
    want = sorted(np.argsort(-values, kind="stable")[:20].tolist())
    assert r["indices"] == want and r["golden_match"] is True
    assert r["n"] == 77 and r["k"] == 20 and r["lanes"] == 4 and r["mode"] == "exact"
    assert r["cycles"] == r["model_cycles"] and r["cycles"]["select"] > 0
    assert "golden  MATCH" in capsys.readouterr().out


def test_verilog(tmp_path):
    r = run_cli("verilog", "--top", "topk", "--config", "small", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "topk.v").read_text()
    assert "module topk" in text and "i__payload" in text
    r = run_cli("verilog", "--top", "nope")
    assert r.returncode == 2 and "unknown top 'nope'" in r.stderr


def test_parser_lists_all_commands():
    assert set(SUBCOMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


def _qkv(tmp_path, m=3, n=20, d=8, seed=9, **over):
    rng = np.random.default_rng(seed)
    arrays = {"q": rng.integers(-2048, 2048, (m, d)), "k": rng.integers(-2048, 2048, (n, d)),
              "v": rng.integers(-2048, 2048, (n, d)), "q_scale": 0.002, "k_scale": 0.003,
              "v_scale": 0.01}
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "qkv.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("over,extra,msg", [
    ({"q": np.zeros((2, 8))}, [], "q must be an integer array"),
    ({"k_scale": None}, [], "missing k_scale"),
    ({"q": np.zeros((2, 12), int), "k": np.zeros((5, 12), int), "v": np.zeros((5, 12), int)},
     [], "head dimension d = 12 is not one of (8,)"),
    ({"k": np.zeros((200, 8), int), "v": np.zeros((200, 8), int)}, [], "over the capacity 128"),
    ({"v": np.zeros((19, 8), int)}, [], "k has 20 rows but v has 19"),
    ({"q": np.full((2, 8), 5000)}, [], "q holds values outside"),
    ({"q_scale": -1.0}, [], "q_scale must be a positive"),
    ({}, ["--kv-keep", "0"], "--kv-keep must be at least 1"),
    ({}, ["--tau", "1.5"], "--tau must be from 0 to 1"),
    ({}, ["--msb-bits", "12"], "--msb-bits: msb_bits 12 must be below data_width 12"),
    ({}, ["--dram-bytes-per-cycle", "17"], "--dram-bytes-per-cycle must be from 1 to"),
])
def test_attention_bad_input_is_one_line(tmp_path, capsys, over, extra, msg):
    path = _qkv(tmp_path, **over)
    rc = main(["attention", "--input", str(path), "--config", "small", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and err.count("\n") == 1, err


@pytest.mark.xdist_group("attention-small")
def test_attention_runs_rtl_and_writes_json(tmp_path, capsys):
    path = _qkv(tmp_path)
    out = tmp_path / "a.json"
    rc = main(["attention", "--input", str(path), "--config", "small", "--kv-keep", "5",
               "--renorm", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    r = json.loads(out.read_text())
    assert r["golden_match"] is True and "MATCH" in text
    assert np.asarray(r["output"]).shape == (3, 8)
    assert r["cycles"] > 0 and 0 < r["multiplier_utilization"] <= 1
    assert r["macs"] == 3 * 20 * 8 + 3 * 5 * 8
    # full precision: K both planes (20 rows x 8 + 4 bytes), V only the kept rows; a Q row is
    # 12 bytes, so rows 1 and 2 straddle beats: 1 + 2 + 2 beats
    assert r["dram_bytes"]["k_msb"] == 160 and r["dram_bytes"]["k_lsb"] == 80
    assert r["dram_bytes"]["q"] == 5 * 16 and 0 < r["dram_bytes"]["v"] <= 20 * 12 + 32
    assert r["dram_bytes"]["total"] == sum(v for k, v in r["dram_bytes"].items() if k != "total")
    assert r["refetched_rows"] == []


@pytest.mark.xdist_group("attention-small")
def test_attention_progressive_quantization(tmp_path, capsys):
    """--tau 1 refetches every row (the LSB plane once), --tau 0 none; 6 + 6 split; a slow
    memory takes more cycles for the same bytes."""
    path = _qkv(tmp_path, seed=4)
    runs = {}
    for name, extra in (("all", ["--tau", "1"]), ("none", ["--tau", "0"]),
                        ("none66", ["--tau", "0", "--msb-bits", "6"]),
                        ("slow", ["--tau", "0", "--dram-bytes-per-cycle", "2"])):
        out = tmp_path / f"{name}.json"
        rc = main(["attention", "--input", str(path), "--config", "small", *extra,
                   "--json", str(out)])
        text = capsys.readouterr().out
        assert rc == 0, text
        runs[name] = json.loads(out.read_text())
        assert runs[name]["golden_match"] is True
    assert runs["all"]["refetched_rows"] == [0, 1, 2]
    assert runs["all"]["dram_bytes"]["k_lsb"] == 80 and runs["none"]["dram_bytes"]["k_lsb"] == 0
    assert runs["none"]["refetched_rows"] == []
    assert runs["none66"]["dram_bytes"]["k_msb"] == 128    # 20 rows of 6 bytes: 8 whole beats
    assert runs["slow"]["dram_bytes"] == runs["none"]["dram_bytes"]
    assert runs["slow"]["cycles"] > runs["none"]["cycles"]
    # the datapath waits for K while it loads, longer on the slow memory
    assert runs["slow"]["memory_wait_cycles"]["k"] > runs["none"]["memory_wait_cycles"]["k"] > 0


@pytest.mark.parametrize("mhz,msg", [("5", "f_out_mhz must be in"), ("nan", "--mhz nan"),
                                     ("-3", "--mhz -3")])
def test_synth_bad_clock_is_one_line(capsys, mhz, msg):
    """A clock the board's PLL cannot make stops before any build, with one line."""
    rc = main(["synth", "--board", "ulx3s-85f", "--top", "topk", "--mhz", mhz,
               "-o", "build/synth/never"])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and err.count("\n") == 1, err
