"""The float MiniLM reference (`golden/minilm.py`) against an independent torch run
(`tests/fixtures/minilm_ref.npz`, made by `tests/fixtures/make_minilm_ref.py` with transformers),
its attention hook, its erf, and the quantizer (`golden/quant.py`). No torch needed. Seeds:
``SPATTEN_SEED`` overrides the fixed default; every seeded test prints its seed."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from spatten.golden import minilm as mm
from spatten.golden.quant import dequantize, int_range, quantize

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
FIXTURE = Path(__file__).parent / "fixtures" / "minilm_ref.npz"
PROBED = ((0, 0), (5, 11))

# Measured against the fixture (numpy 2.4.6, x86-64): embeddings 1.4e-7, the probed attention
# probabilities 7.5e-7 (2.6e-6 over all 72 heads). The bounds leave about 7x for other float32
# summation orders (BLAS kernels) and still catch real model errors: a tanh GELU moves the
# embeddings by 2.4e-4, a LayerNorm eps of 1e-5 instead of 1e-12 by 8e-5.
EMB_TOL = 1e-6
PROB_TOL = 5e-6


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def model():
    return mm.MiniLM()


@pytest.fixture(scope="module")
def runs(model):
    """(ids, hidden, records) of every sample text with the float attention."""
    out = []
    for text in mm.SAMPLE_TEXTS:
        ids = model.tokenize(text)
        hidden, records = model.forward(ids, record=True)
        out.append((ids, hidden, records))
    return out


def pooled(hidden):
    e = hidden.mean(axis=0)
    return e / np.linalg.norm(e)


# ---------------------------------------------------------------------------- against torch

def test_fixture_is_for_these_texts(ref):
    assert tuple(ref["texts"].tolist()) == mm.SAMPLE_TEXTS


def test_fixture_holds_what_the_tests_read(ref):
    """Every array of the fixture (all of them computed by torch, none by golden/minilm.py) is
    compared below: the texts, the ids and both probed heads of every text, the embeddings. A
    value added to the fixture maker must be added here too."""
    n = len(mm.SAMPLE_TEXTS)
    want = {"texts", "emb"} | {f"ids_{i}" for i in range(n)} | {
        f"probs_l{layer}h{head}_{i}" for i in range(n) for layer, head in PROBED}
    assert set(ref) == want
    assert ref["emb"].shape == (n, mm.HIDDEN)
    # torch's probabilities are rows of a softmax and its embeddings unit vectors: the fixture
    # holds what it says it holds
    for i in range(n):
        for layer, head in PROBED:
            np.testing.assert_allclose(ref[f"probs_l{layer}h{head}_{i}"].sum(axis=1), 1.0,
                                       atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ref["emb"], axis=1), 1.0, atol=1e-6)


def test_token_ids_match_reference(model, ref):
    lengths = []
    for i, text in enumerate(mm.SAMPLE_TEXTS):
        ids = model.tokenize(text)
        assert ids.dtype == np.int64
        assert ids.tolist() == ref[f"ids_{i}"].tolist()
        lengths.append(ids.size)
    assert min(lengths) <= 16 and max(lengths) >= 110   # short and long texts both covered


def test_embeddings_match_reference(model, ref):
    emb = model.embed(mm.SAMPLE_TEXTS)
    assert emb.shape == (len(mm.SAMPLE_TEXTS), mm.HIDDEN) and emb.dtype == np.float32
    diff = float(np.abs(emb - ref["emb"]).max())
    print(f"max |embedding - torch| = {diff:.3g}")
    assert diff < EMB_TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # the single-text form gives the same vector
    assert np.array_equal(model.embed(mm.SAMPLE_TEXTS[2]), emb[2])


def test_recorded_probabilities_match_reference(runs, ref):
    worst = 0.0
    for i, (ids, _, records) in enumerate(runs):
        for layer, head in PROBED:
            p = records[layer][head]["probs"]
            assert p.shape == (ids.size, ids.size) and p.dtype == np.float32
            worst = max(worst, float(np.abs(p - ref[f"probs_l{layer}h{head}_{i}"]).max()))
    print(f"max |probability - torch| = {worst:.3g}")
    assert worst < PROB_TOL


# ---------------------------------------------------------------------------- records

def test_records_are_consistent(runs):
    for ids, hidden, records in runs:
        n = ids.size
        assert hidden.shape == (n, mm.HIDDEN) and hidden.dtype == np.float32
        assert len(records) == mm.LAYERS and all(len(r) == mm.HEADS for r in records)
        for layer_records in records:
            for r in layer_records:
                assert set(r) == {"q", "k", "v", "probs", "out"}
                for key in ("q", "k", "v", "out"):
                    assert r[key].shape == (n, mm.HEAD_DIM) and r[key].dtype == np.float32
                p = r["probs"]
                assert np.all(p >= 0)
                np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=2e-6)
                assert np.array_equal(p, mm.softmax_probs(r["q"], r["k"]))
                assert np.array_equal(r["out"], mm.float_attention(r["q"], r["k"], r["v"], 0, 0))


def test_softmax_applies_the_scaling_itself():
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    q, k = (rng.standard_normal((9, mm.HEAD_DIM)).astype(np.float32) for _ in range(2))
    s = (q.astype(np.float64) @ k.T.astype(np.float64)) / math.sqrt(mm.HEAD_DIM)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    np.testing.assert_allclose(mm.softmax_probs(q, k), e / e.sum(axis=1, keepdims=True),
                               atol=1e-6)


# ---------------------------------------------------------------------------- the hook

def test_wrapped_float_attention_is_bit_exact(model, runs):
    ids, hidden, _ = runs[3]
    calls = []

    def wrapped(q, k, v, layer, head):
        calls.append((layer, head))
        for a in (q, k, v):
            assert a.shape == (ids.size, mm.HEAD_DIM) and a.dtype == np.float32
        return mm.float_attention(q, k, v, layer, head)

    assert np.array_equal(model.forward(ids, attention=wrapped), hidden)
    assert calls == [(layer, head) for layer in range(mm.LAYERS) for head in range(mm.HEADS)]
    assert np.array_equal(model.embed(mm.SAMPLE_TEXTS[3], attention=wrapped),
                          model.embed(mm.SAMPLE_TEXTS[3]))


def test_attention_hook_is_used(model, runs):
    ids, hidden, _ = runs[1]
    rng = np.random.default_rng(SEED)
    print("seed", SEED)

    def garbage(q, k, v, layer, head):
        return rng.standard_normal(q.shape).astype(np.float32)

    assert float(pooled(model.forward(ids, attention=garbage)) @ pooled(hidden)) < 0.99

    # one head replaced: a small but real change; the record keeps the float probabilities
    # and the replacement's output
    def one_head_zero(q, k, v, layer, head):
        out = mm.float_attention(q, k, v, layer, head)
        return np.zeros_like(out) if (layer, head) == (5, 11) else out

    h2, rec = model.forward(ids, attention=one_head_zero, record=True)
    assert not np.array_equal(h2, hidden)
    assert np.array_equal(rec[5][11]["out"], np.zeros((ids.size, mm.HEAD_DIM), np.float32))
    assert np.array_equal(rec[5][11]["probs"],
                          mm.softmax_probs(rec[5][11]["q"], rec[5][11]["k"]))


def test_forward_rejects_bad_input(model):
    ids = model.tokenize(mm.SAMPLE_TEXTS[0])
    with pytest.raises(ValueError, match="shape"):
        model.forward(ids, attention=lambda q, k, v, layer, head: q[:, :8])
    with pytest.raises(ValueError):
        model.forward(np.array([], dtype=np.int64))
    with pytest.raises(ValueError):
        model.forward(ids.reshape(1, -1))
    with pytest.raises(ValueError):
        model.forward(np.array([101, model.vocab_size]))
    with pytest.raises(TypeError):
        model.tokenize(ids)


def test_tokenizer_no_padding_truncates_at_256(model):
    short = model.tokenize("Hello world.")
    assert short.tolist()[0] == 101 and short.tolist()[-1] == 102 and short.size == 5
    long = model.tokenize(" ".join(mm.SAMPLE_TEXTS) * 3)
    assert long.size == mm.MAX_TOKENS and long[0] == 101 and long[-1] == 102


# ---------------------------------------------------------------------------- erf

def test_erf_accuracy():
    x = np.concatenate([np.linspace(-6.0, 6.0, 240_001),
                        [0.0, -0.0, 1.0, -1.0, np.nextafter(1.0, 2.0), 4.0, 4.5, 30.0, -1e30]])
    for dtype, tol in ((np.float64, 2e-9), (np.float32, 1.5e-7)):
        xd = x.astype(dtype)
        ref = np.array([math.erf(float(v)) for v in xd])
        got = mm.erf(xd)
        assert got.dtype == dtype
        err = float(np.abs(got.astype(np.float64) - ref).max())
        print(f"max |erf - math.erf| in {np.dtype(dtype).name}: {err:.3g}")
        assert err < tol
        assert np.array_equal(mm.erf(-xd), -got)
    assert mm.erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]
    assert np.isnan(mm.erf(np.array([np.nan]))).all()
    assert mm.erf(np.arange(-3, 4)).dtype == np.float64


def test_gelu_is_the_erf_form():
    x = np.linspace(-8.0, 8.0, 1601)
    ref = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    np.testing.assert_allclose(mm.gelu(x), ref, rtol=0, atol=1e-7)
    assert mm.gelu(x.astype(np.float32)).dtype == np.float32


# ---------------------------------------------------------------------------- quantizer

@pytest.mark.parametrize("width", [2, 4, 8, 12, 16, 32])
def test_quantize_round_trip(width):
    rng = np.random.default_rng(SEED + width)
    print("seed", SEED + width)
    x = rng.standard_normal((7, 33)) * 3.0
    ints, scale = quantize(x, width)
    lo, hi = int_range(width)
    assert ints.dtype == np.int64 and ints.shape == x.shape
    assert isinstance(scale, float) and scale == pytest.approx(np.abs(x).max() / hi, rel=1e-15)
    assert ints.min() >= -hi and ints.max() <= hi and np.abs(ints).max() == hi
    assert np.all(np.abs(dequantize(ints, scale) - x) <= scale / 2 * (1 + 1e-12))
    # the same scale given back gives the same integers
    assert np.array_equal(quantize(x, width, scale)[0], ints)


def test_quantize_rounds_half_to_even_and_saturates():
    ints, scale = quantize([0.5, 1.5, 2.5, -0.5, -2.5, 3.49], width=4, scale=1.0)
    assert scale == 1.0 and ints.tolist() == [0, 2, 2, 0, -2, 3]
    ints, _ = quantize([100.0, -100.0, 7.4, -8.4, 7.6], width=4, scale=1.0)
    assert ints.tolist() == [7, -8, 7, -8, 7]
    ints, _ = quantize(np.array([[1e9, -1e9]], dtype=np.float32), width=12, scale=0.5)
    assert ints.tolist() == [[2047, -2048]]


def test_quantize_zero_and_empty_tensors():
    ints, scale = quantize(np.zeros((3, 4)), 12)
    assert scale == 1.0 and ints.shape == (3, 4) and not ints.any()
    ints, scale = quantize(np.zeros(0), 8)
    assert scale == 1.0 and ints.shape == (0,)
    ints, scale = quantize(np.float32(-0.75), 8)      # a scalar keeps its 0-d shape
    assert ints.shape == () and int(ints) == -127 and scale == pytest.approx(0.75 / 127)


def test_quantize_rejects_bad_arguments():
    for width in (1, 0, -3, 33, 64):
        with pytest.raises(ValueError, match="width"):
            quantize([1.0], width)
    for width in (12.0, True, "12", None):
        with pytest.raises(TypeError, match="width"):
            quantize([1.0], width)
    for scale in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            quantize([1.0], 8, scale)
    with pytest.raises(ValueError, match="finite"):
        quantize([1.0, math.nan], 8)
    with pytest.raises(ValueError, match="finite"):
        quantize([math.inf], 8, scale=1.0)
    with pytest.raises(ValueError, match="real"):
        quantize(np.array([1 + 2j]), 8)
    with pytest.raises(ValueError, match="integer"):
        dequantize(np.array([0.5]), 1.0)
    with pytest.raises(ValueError, match="scale"):
        dequantize(np.array([1]), 0.0)
