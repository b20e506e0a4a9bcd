"""Building blocks shared by the units: `skid.SkidBuffer`, `packer.BeatPacker`,
`zero_elim.ZeroEliminator`, `rowstream` (widen, narrow, fork), `fanout`, `dsp.Multiplier` (the
one registered multiplier), `recip.Reciprocal` (the one normalise-and-divide reciprocal) and
`adder_tree.AdderTree`."""
