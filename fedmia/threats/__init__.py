"""The parties of an audit and what each of them observes."""

from fedmia.threats.base import AttackOutcome, BlackBox, Observation, ReferenceTrainer, reference_knowledge, run_attacks
from fedmia.threats.outsider import Outsider
from fedmia.threats.queries import AttackQueries, QueryCall, attack_queries

__all__ = [
    "AttackQueries",
    "QueryCall",
    "attack_queries",
    "AttackOutcome",
    "BlackBox",
    "Observation",
    "Outsider",
    "ReferenceTrainer",
    "reference_knowledge",
    "run_attacks",
]
