"""Audit stage: joins attack scores with membership ground truth into metrics and figures."""

from fedmia.audit.epsilon import EpsilonBound, clopper_pearson_upper, epsilon_lower_bound
from fedmia.audit.metrics import (
    FPR_KEYS,
    FPR_LEVELS,
    AttackMetrics,
    empirical_epsilon,
    empirical_epsilon_from_roc,
    evaluate_scores,
    is_resolvable,
    roc_points,
    tpr_at_fpr_level,
    utility_metrics,
)
from fedmia.audit.plots import plot_metric_over_rounds, plot_privacy_utility, plot_roc
from fedmia.audit.uncertainty import MetricIntervals, PairedDifference, bootstrap_intervals, paired_difference

__all__ = [
    "FPR_KEYS",
    "FPR_LEVELS",
    "AttackMetrics",
    "MetricIntervals",
    "PairedDifference",
    "bootstrap_intervals",
    "paired_difference",
    "EpsilonBound",
    "clopper_pearson_upper",
    "empirical_epsilon",
    "empirical_epsilon_from_roc",
    "epsilon_lower_bound",
    "evaluate_scores",
    "is_resolvable",
    "plot_metric_over_rounds",
    "plot_privacy_utility",
    "plot_roc",
    "roc_points",
    "tpr_at_fpr_level",
    "utility_metrics",
]
