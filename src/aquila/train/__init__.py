"""Run assembly: a training run built from a config (run directory, tokenizer, data, model,
callbacks), the `aquila train` and `aquila bench` commands and the end-of-run report.

It sits above the engine (the loop, checkpoints, distribution, live control), the monitor and
the mixing policies, and is the one place that wires them together.
"""
