"""The top-k engine (`topk.TopK`) and the radix-select core (`radix`: run intake, row
reader, digit histogram, bin select, tie bookkeeping) that it shares with value pruning's
selector (`hw.attention.value_select`); the engine's own parts are `radix_*` and
`stat_threshold` (statistical mode)."""
