"""The configuration (spatten/config.py): the presets built from the default with
`Config.replace` equal, field for field, the presets as they were spelled out before; the memory
side's fields are validated with clear messages; the golden models take their defaults from the
default configuration."""

import dataclasses
import inspect

import pytest

from spatten.config import (
    DEFAULT,
    PRESETS,
    AttentionConfig,
    Config,
    MemoryConfig,
    TopKConfig,
    preset,
)

#: The presets as they were written out field by field before they were derived from DEFAULT.
SPELLED_OUT = {
    "default": Config(name="default", topk=TopKConfig(lanes=16, value_width=16, capacity=1024)),
    "small": Config(name="small", topk=TopKConfig(lanes=4, value_width=12, capacity=256,
                                                  digit_bits=3),
                    attention=AttentionConfig(qk_mults=8, pv_mults=8, capacity=128,
                                              softmax_lanes=1, y_frac_bits=8, topk_lanes=4,
                                              topk_digit_bits=3)),
    "half": Config(name="half", topk=TopKConfig(lanes=16, value_width=16, capacity=1024),
                   attention=AttentionConfig(qk_mults=32, pv_mults=32)),
    "large": Config(name="large", topk=TopKConfig(lanes=16, value_width=16, capacity=4096)),
}


def _fields(obj, prefix=""):
    """Every leaf field of a (nested) dataclass as {dotted name: value}."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_fields(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


@pytest.mark.parametrize("name", sorted(SPELLED_OUT))
def test_presets_equal_their_old_values(name):
    got, want = _fields(preset(name)), _fields(SPELLED_OUT[name])
    assert got.keys() == want.keys()
    differ = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    assert not differ, differ
    assert preset(name) == SPELLED_OUT[name]


def test_presets_are_the_default_replaced():
    assert set(PRESETS) == set(SPELLED_OUT)
    assert PRESETS["default"] is DEFAULT and DEFAULT == Config()
    # each preset differs from the default only where its replace() says
    large, default = _fields(PRESETS["large"]), _fields(DEFAULT)
    assert {k: v for k, v in large.items() if default[k] != v} == {"name": "large",
                                                                   "topk.capacity": 4096}


def test_memory_side_fields():
    mem = MemoryConfig()
    assert (mem.addr_width, mem.token_bits, mem.group_size, mem.q_slots) == (32, 16, 3, 4)
    cfg = DEFAULT.replace(mem_group_size=1, mem_token_bits=12)
    assert cfg.memory.group_size == 1 and cfg.memory.token_bits == 12
    assert cfg.attention == DEFAULT.attention and cfg.topk == DEFAULT.topk


@pytest.mark.parametrize("field,value", [("group_size", 0), ("group_size", 9), ("token_bits", 0),
                                         ("addr_width", 65), ("q_slots", 0), ("q_slots", 17),
                                         ("group_size", "3")])
def test_memory_side_fields_are_checked(field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer from .* not {value!r}"):
        MemoryConfig(**{field: value})


def test_golden_defaults_come_from_the_default_config():
    """No second copy of a default: the golden models' keyword defaults are the configuration's
    (changing DEFAULT's values would change them)."""
    from spatten.golden import dram_image, progressive, quant

    att, mem = DEFAULT.attention, DEFAULT.memory
    lay = dram_image.ImageLayout(layers=1, kv_heads=1, q_heads=1, n_max=8, m_max=8, d=8)
    assert (lay.width, lay.msb_bits, lay.beat_bytes, lay.align, lay.d_max) == (
        att.data_width, mem.msb_bits, mem.beat_bytes, mem.align, max(att.head_dims))

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(quant.quantize, "width") == att.data_width
    assert default(dram_image.split_k, "width") == att.data_width
    assert default(dram_image.split_k, "msb_bits") == mem.msb_bits
    for fn in (dram_image.PlaneLayout.run_requests, dram_image.fetch_runs,
               dram_image.requests_for, dram_image.bytes_for):
        assert default(fn, "beat_bytes") == mem.beat_bytes
        assert default(fn, "max_burst") == mem.max_burst
    assert default(progressive.tau_fixed, "prob_bits") == att.prob_bits
