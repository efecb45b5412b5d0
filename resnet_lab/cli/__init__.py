"""Command lines: one module per command, holding its options, printing and exit codes; the library computes."""
