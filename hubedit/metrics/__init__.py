"""Metrics (ground floor): metrics (JSD, equalised odds difference, group rates, accuracy), Pareto fronts and
hypervolume, comparison tables, Pareto plots and timing.

Plotting imports matplotlib only when called; everything else is torch / numpy / pandas.
"""

from .scores import LN2, accuracy, equalized_odds_difference, group_rates, jsd, jsd_from_logits
from .pareto import (
    DEFAULT_REF,
    dominance_table,
    hypervolume,
    hypervolume_table,
    pareto_front,
    select_on_validation,
    to_markdown,
)
from .plots import pareto_figure, pareto_plot
from .timing import TimingResult, time_per_model, timing_table

__all__ = [
    "LN2",
    "DEFAULT_REF",
    "jsd",
    "jsd_from_logits",
    "equalized_odds_difference",
    "group_rates",
    "accuracy",
    "pareto_front",
    "select_on_validation",
    "hypervolume",
    "dominance_table",
    "hypervolume_table",
    "to_markdown",
    "pareto_figure",
    "pareto_plot",
    "TimingResult",
    "time_per_model",
    "timing_table",
]
