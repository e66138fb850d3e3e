"""The evaluation protocol and the paper's experiments (top floor): Pareto evaluation of editors against
the baselines (:mod:`.protocol`), matched comparisons at the same per-model sparsity or feature count
(:mod:`.matched`), composition and sample efficiency (:mod:`.experiments`).

The metrics, Pareto fronts, hypervolume, tables and plots these build on are :mod:`hubedit.metrics`.
"""
