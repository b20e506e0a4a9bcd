"""The query pipeline (`attention.Attention`): K/V buffers, the Q.K array (`qk`), the
softmax (`softmax`, `softmax_*`), value pruning's selector (`value_select`), prob x V (`pv`,
`pv_*`), and the control that overlaps queries (`run_control`, `query_issuer`, `pass_gate`,
`pair_router`, `kv_buffers`)."""
