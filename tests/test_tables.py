"""The tables the RTL and the golden models share (`spatten.config`), pinned against references
that decide every entry exactly from the formula of the docstring, without the floats that built
the table.

- `AttentionConfig.exp_table`: entry f is round(2**16 * 2**(-f / 2**F)). For 0 < f < 2**F the
  value is irrational, so it is never a tie, and e is its nearest integer exactly when
  (2e - 1)**(2**F) < 2**(17 * 2**F - f) < (2e + 1)**(2**F) (both sides doubled, then raised to
  the power 2**F): integers only.
- `z_table(ratio_bits, z_frac_bits)`: entry r is round(Phi^-1(1 - u) * 2**ZF), u = (r + 0.5) /
  2**RB. Phi is increasing, so z is that rounding exactly when Q((z + 1/2) / 2**ZF) < u <
  Q((z - 1/2) / 2**ZF), Q(x) = 1 - Phi(x) = erfc(x / sqrt 2) / 2. Q is computed in `decimal` at
  60 digits from its Taylor series (see `_upper_tail`), accurate to better than 1e-50; every
  entry's inequalities are asserted with a margin of 1e-40 (relative to u), so a table entry
  is accepted only when the decision is certain. A tie (u exactly on a boundary) would need
  Phi^-1 of a dyadic rational to be a dyadic rational, which it is only at u = 1/2 (z = 0,
  never an entry: u = (r + 1/2) / 2**RB = 1/2 has no integer r).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest

from spatten.config import PRESETS, AttentionConfig, TopKConfig, z_table

# ---------------------------------------------------------------------------------------------
# exp_table


def exact_exp_entry(f: int, frac_bits: int, prob_bits: int = 16) -> int:
    """The integer nearest 2**prob_bits * 2**(-f / 2**frac_bits), decided with integers."""
    n = 1 << frac_bits
    target = (prob_bits + 1) * n - f          # (2 * 2**(pb - f/n))**n = 2**target

    def below(c):                             # c / 2 < the value, for c odd: c**n < 2**target
        return (c ** n).bit_length() <= target

    e = round(2.0 ** (prob_bits - f / n))     # a guess; the integer tests below decide
    while not below(2 * e - 1):
        e -= 1
    while below(2 * e + 1):
        e += 1
    assert below(2 * e - 1) and not below(2 * e + 1)
    return e


# every y_frac_bits a preset uses (10 and 8), and 4 and 6 (y_frac_bits = 12, the top of the
# allowed range, passes too but takes 30 s: its 2 x 4096 powers have 70000 bits each)
FRAC_BITS = sorted({c.attention.y_frac_bits for c in PRESETS.values()} | {4, 6})


@pytest.mark.parametrize("frac_bits", FRAC_BITS)
def test_exp_table_exact(frac_bits):
    table = AttentionConfig(y_frac_bits=frac_bits).exp_table()
    assert len(table) == 1 << frac_bits
    assert table[0] == 1 << 16                      # the row maximum: e = 2**16 exactly
    want = [exact_exp_entry(f, frac_bits) for f in range(1 << frac_bits)]
    bad = [(f, got, w) for f, (got, w) in enumerate(zip(table, want, strict=True)) if got != w]
    assert not bad, f"y_frac_bits={frac_bits}: (f, table, exact) {bad[:8]}"
    # monotone, and above 2**15 (2**-f/N > 1/2), so e fits U1.16
    assert all(a >= b for a, b in zip(table, table[1:], strict=False))
    assert table[-1] > 1 << 15


def test_exp_reference_decides_near_ties():
    """The reference itself, on hand-worked entries: f = N/2 is 2**15.5 = 46340.95...,
    f = 1 of N = 2**10 is 65491.65... (rounds up), N = 2**4, f = 3: 2**(16 - 3/16) =
    57548.87..."""
    assert exact_exp_entry(2, 2) == 46341
    assert exact_exp_entry(1, 10) == 65492
    assert exact_exp_entry(3, 4) == 57549
    assert exact_exp_entry(0, 10) == 65536
    # the entries nearest a tie (found with 50-digit decimal logarithms): 36714.50427...,
    # 48886.49789..., 43742.49971...
    assert exact_exp_entry(214, 8) == 36715
    assert exact_exp_entry(433, 10) == 48886
    assert exact_exp_entry(2389, 12) == 43742


# ---------------------------------------------------------------------------------------------
# z_table

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628")
_DIGITS = 60
_MARGIN = Decimal("1e-40")


def _upper_tail(x: Decimal) -> Decimal:
    """Q(x) = 1 - Phi(x) for |x| < 6, at `_DIGITS` digits, from
    erf(s) = 2/sqrt(pi) * exp(-s**2) * sum_{k>=0} 2**k s**(2k+1) / (1*3*...*(2k+1)), s = x/sqrt 2
    (a series of positive terms: no cancellation inside the sum)."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS + 10
        s = abs(x) / Decimal(2).sqrt()
        term = s
        total = Decimal(0)
        k = 0
        while term > Decimal(10) ** -(_DIGITS + 8):
            total += term
            k += 1
            term = term * 2 * s * s / (2 * k + 1)
        erf = 2 / _PI.sqrt() * (-s * s).exp() * total
        upper = (1 - erf) / 2                      # Q(|x|)
        return +(upper if x >= 0 else 1 - upper)


def exact_z_entry_ok(z: int, r: int, ratio_bits: int, z_frac_bits: int) -> bool:
    """True when z = round(Phi^-1(1 - (r + 1/2) / 2**RB) * 2**ZF), decided with a margin."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS + 10
        u = (Decimal(r) + Decimal("0.5")) / (1 << ratio_bits)
        scale = Decimal(1 << z_frac_bits)
        upper_edge = _upper_tail((Decimal(z) + Decimal("0.5")) / scale)   # Q at z + 1/2 LSB
        lower_edge = _upper_tail((Decimal(z) - Decimal("0.5")) / scale)   # Q at z - 1/2 LSB
        return upper_edge < u * (1 - _MARGIN) and u * (1 + _MARGIN) < lower_edge


def test_upper_tail_reference():
    """The series against known values: Q(0) = 1/2, Q(1.959963984540054) = 0.025,
    Q(-1) = 1 - Q(1), and math.erfc to float precision."""
    assert abs(_upper_tail(Decimal(0)) - Decimal("0.5")) < Decimal("1e-55")
    assert abs(_upper_tail(Decimal("1.959963984540054")) - Decimal("0.025")) < Decimal("1e-16")
    assert abs(_upper_tail(Decimal(-1)) + _upper_tail(Decimal(1)) - 1) < Decimal("1e-55")
    for x in (0.1, 0.5, 1.0, 2.5, 3.3, 4.5):
        assert float(_upper_tail(Decimal(x))) == pytest.approx(math.erfc(x / math.sqrt(2)) / 2,
                                                               rel=1e-13)


# (ratio_bits, z_frac_bits): the presets' (6, 8), the statistical threshold's test configs
# (5, 5) and (10, 2), and the ends of the allowed ranges
Z_TABLES = sorted({(c.topk.ratio_bits, c.topk.z_frac_bits) for c in PRESETS.values()}
                  | {(5, 5), (10, 2), (2, 2), (2, 16), (10, 16)})


@pytest.mark.parametrize("ratio_bits,z_frac_bits", Z_TABLES)
def test_z_table_exact(ratio_bits, z_frac_bits):
    TopKConfig(ratio_bits=ratio_bits, z_frac_bits=z_frac_bits)      # a legal configuration
    table = z_table(ratio_bits, z_frac_bits)
    assert len(table) == 1 << ratio_bits
    bad = [(r, z) for r, z in enumerate(table)
           if not exact_z_entry_ok(z, r, ratio_bits, z_frac_bits)]
    assert not bad, f"z_table({ratio_bits}, {z_frac_bits}): wrong (r, entry) {bad[:8]}"
    # symmetric: Phi^-1(1 - u) = -Phi^-1(u), and u of r and of 2**RB - 1 - r add to 1
    assert table == [-z for z in reversed(table)]


def test_z_reference_rejects_neighbours():
    """The decision bites: the entries one LSB off are rejected (entry 6 of (6, 8) is 326)."""
    assert exact_z_entry_ok(326, 6, 6, 8)
    assert not exact_z_entry_ok(325, 6, 6, 8) and not exact_z_entry_ok(327, 6, 6, 8)
