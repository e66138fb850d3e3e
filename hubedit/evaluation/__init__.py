"""The evaluation protocol and the paper's experiments (top floor): Pareto evaluation of editors against
the baselines (:mod:`.protocol`), matched comparisons at the same per-model sparsity or feature count
(:mod:`.matched`), composition and sample efficiency (:mod:`.experiments`), and results over several seeds
(mean and sample standard deviation of the hypervolume tables, plots of the spread: :mod:`.seeds`).

The metrics, Pareto fronts, hypervolume, tables and plots these build on are :mod:`hubedit.metrics`.
"""
