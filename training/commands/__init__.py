"""Subcommands of ``rerender`` owned by training: reconstruct, dataset, train, evaluate, synth, demo."""
