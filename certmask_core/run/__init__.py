"""The run layer: command line, experiment runner, data and model specs, plots, records.

Everything a certification *run* needs around the pure core (geometry, constructions, coverage,
certification). The pure core never imports this package (a test enforces it), so the core stays a
small numpy + numba library that other tools can embed.
"""
