"""Shared machinery of bench/throughput, bench/scale and bench/wakeup, one module per concern:
`processes` (start, wait, stop, clean up), `prerequisites` (what the machine must have), `topology`
(namespaces A and B), `planes` (veth and ipsecd; bench/peers adds the others), `measure` (one round),
`report` (medians, table, JSON), `runner` (a bench from start to end)."""
