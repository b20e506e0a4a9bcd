"""`spatten bench dram` (sim/benchmarks/bench_dram.py) on its --quick path: one short text per
model, taus 0, 0.2 and 1 (1 refetches every row), one threshold of the error trigger. About 15 s
on one core, most of it loading SmolLM2; the SmolLM2 checks are skipped without its weights."""

import json

import numpy as np
import pytest

from spatten.sim.benchmarks import bench_dram as bd

TENSORS = ("k_msb", "k_lsb", "q", "v")
SMOL_MISSING = bd.smollm2_missing()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_dram")
    jp, pp = out / "dram.json", out / "dram.png"
    assert bd.main(["--quick", "--taus", "0,0.2,1", "--error-trigger", "--json", str(jp),
                    "--plot", str(pp)]) == 0
    assert pp.stat().st_size > 0
    return json.loads(jp.read_text())


def _models(result):
    names = ["minilm"] + ([] if SMOL_MISSING else ["smollm2"])
    return [(name, result["models"][name]) for name in names]


def _by_label(res):
    return {s["label"]: s for s in res["settings"]}


def test_keys_and_settings(result):
    assert result["quick"] and result["taus"] == [0.0, 0.2, 1.0]
    if SMOL_MISSING:
        assert result["models"]["smollm2"] == {"skipped": SMOL_MISSING}
    for name, res in _models(result):
        labels = [s["label"] for s in res["settings"]]
        thetas = {b: t[1:2] for b, t in bd.ERROR_THETAS[name].items()}
        assert labels == [s.label for s in bd.settings([0.0, 0.2, 1.0], thetas=thetas)], name
        assert len(labels) == 2 + 2 * 5
        for s in res["settings"]:
            assert {"label", "kind", "totals", "layers", "quality", "seconds"} <= set(s)
            assert len(s["layers"]) == res["layers"]
            if s["kind"] == "float":
                continue
            for part in [s["totals"]] + s["layers"]:
                assert set(part["bytes"]) == set(TENSORS)
                for key in ("share_rows_refetched", "share_groups_refetched"):
                    assert 0.0 <= part[key] <= 1.0, (name, s["label"], key)
                assert part["kv_bytes"] == part["bytes"]["k_msb"] + part["bytes"]["k_lsb"] + \
                    part["bytes"]["v"]
                # the LSB plane is read exactly by the groups with a refetch (or all: tau None)
                assert (part["bytes"]["k_lsb"] > 0) == (part["groups_refetched"] > 0 or
                                                         s["kind"] == "full")
            # per-layer figures add up to the totals
            for key in ("rows", "groups", "rows_refetched", "kv_bytes", "dense_12bit_kv"):
                assert sum(layer[key] for layer in s["layers"]) == s["totals"][key]
        assert set(res["fill"]) == {"8", "6"}


def test_tau_extremes_and_bytes(result):
    for _name, res in _models(result):
        by = _by_label(res)
        full = by["12-bit"]["totals"]
        assert full["share_rows_refetched"] == 0.0 and full["bytes"]["k_lsb"] > 0
        for msb in (8, 6):
            split = f"{msb}+{12 - msb}"
            never, always = by[f"{split} tau 0 mid"], by[f"{split} tau 1 mid"]
            t0, t1 = never["totals"], always["totals"]
            assert t0["share_rows_refetched"] == 0.0 and t0["share_groups_refetched"] == 0.0
            assert t1["share_rows_refetched"] == 1.0 and t1["share_groups_refetched"] == 1.0
            b0 = t0["bytes"]
            assert b0["k_lsb"] == 0
            assert t0["total_bytes"] == b0["k_msb"] + b0["q"] + b0["v"]
            assert t0["total_bytes"] < t1["total_bytes"]
            # every row refetched reads what full precision reads, and computes the same
            assert t1["total_bytes"] == t0["total_bytes"] + t1["bytes"]["k_lsb"]
            assert always["quality"] == by["12-bit"]["quality"]
            if msb == 8:
                assert t0["total_bytes"] < full["total_bytes"]
                assert t1["total_bytes"] == full["total_bytes"]
            # dense references do not depend on the setting
            assert t0["dense_12bit_kv"] == full["dense_12bit_kv"]
            assert t0["dense_f32_kv"] == by["float"]["totals"]["dense_f32_kv"]
            assert t0["kv_reduction_vs_12bit"] > 1.0
            # the fills differ by a constant in every key, hence in every dot of a row: the
            # softmax sees the same differences, so the results are bit-identical
            assert by[f"{split} tau 0 zero"]["quality"] == never["quality"]
            assert res["fill"][str(msb)]["better"] == "equal"


def test_quality(result):
    by = _by_label(result["models"]["minilm"])
    assert by["float"]["quality"]["embedding_cos_min"] == pytest.approx(1.0, abs=1e-6)
    assert by["12-bit"]["quality"]["embedding_cos_min"] > 0.99
    for label, s in by.items():
        assert s["quality"]["embedding_cos_min"] > 0.99, label


@pytest.mark.skipif(SMOL_MISSING is not None, reason=str(SMOL_MISSING))
def test_smollm2_quality(result):
    res = result["models"]["smollm2"]
    by = _by_label(res)
    assert by["float"]["quality"]["perplexity_ratio"] == 1.0
    assert res["decode_steps"] == bd.QUICK_SMOL_TOKENS - bd.PROMPT_LEN - 1
    for label, s in by.items():
        assert np.isfinite(s["quality"]["perplexity"]) and s["quality"]["perplexity"] > 1
        assert abs(s["quality"]["perplexity_ratio"] - 1.0) < 0.1, label
    # one K MSB row of d = 64 per token per group per step: 6 bits x 64 = 48 bytes = 3 beats
    t = by["6+6 tau 0 mid"]["totals"]
    tokens = bd.QUICK_SMOL_TOKENS
    cached = sum(range(bd.PROMPT_LEN + 1, tokens))        # cache length of each decode step
    assert t["bytes"]["k_msb"] == 48 * cached * res["layers"] * res["kv_heads"]
    assert t["bytes"]["q"] == 96 * res["group"] * (tokens - bd.PROMPT_LEN - 1) * \
        res["layers"] * res["kv_heads"]


def test_error_estimate():
    # one-hot rows have no first-order error; two equal keys the most; flat rows little
    q = np.full((3, 32), 100)
    n = 64
    p = np.zeros((3, n), dtype=np.int64)
    p[0, 5] = 65535
    p[1, :2] = 32768
    p[2, :] = 1024
    e = bd.error_estimate(p, q, 6, 1e-4)
    sigma = np.sqrt((4 ** 6 - 1) / 12) * np.sqrt(32 * 100 ** 2) * 1e-4 / np.sqrt(32)
    assert e[0] < 1e-3 * sigma
    assert e[1] == pytest.approx(sigma * 0.5, rel=1e-3)          # S2 = 1/2, S3 = 1/4
    assert e[2] == pytest.approx(sigma * np.sqrt(1 / n - 1 / n ** 2), rel=1e-3)
    # fewer dropped bits, smaller error: 4 LSBs against 6 is about a quarter
    assert bd.error_estimate(p, q, 4, 1e-4)[1] == pytest.approx(e[1] * np.sqrt(255 / 4095))


def test_error_trigger_counts(result):
    for _name, res in _models(result):
        by = _by_label(res)
        for s in res["settings"]:
            if s["kind"] != "error":
                continue
            split = f"{s['msb_bits']}+{12 - s['msb_bits']}"
            never = by[f"{split} tau 0 mid"]["totals"]
            t = s["totals"]
            # the same K MSB, Q and V traffic as any other trigger; LSBs only where refetched
            for key in ("k_msb", "q", "v"):
                assert t["bytes"][key] == never["bytes"][key]
            assert t["rows"] == never["rows"] and t["groups"] == never["groups"]
