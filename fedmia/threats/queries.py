"""Query accounting: what a black-box party asked the released model, and what each attack relied on.

A ``BlackBox`` (``fedmia.threats.base``) appends one ``QueryCall`` per ``query``: its purpose (a tag
the caller passes: "candidates", "population", "synthesis", ...), the model queries it made split by kind
("base": one per record; "robustness", "boundary", "perturbation", "augmented": the probes' queries), the
queries made around each record, the records' indices into the dataset (-1: a record the party made up, or
unknown), and, only when the box logs, the inputs themselves (float32, flattened, in the order sent).

``attack_queries`` gives the queries one attack relies on (its rule is in its docstring); the simulator
queries once and shares the answers among the attacks, so these counts overlap between attacks and
each is what that attack alone would have had to ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmia.attacks import Attack

PROBE_KINDS = ("robustness", "boundary", "perturbation", "augmented")
KINDS = ("base", *PROBE_KINDS)
# Knowledge derived from the party's population / shadow records (the target's signals on them, the
# references trained on them, their features): an attack needing any of it relies on how those records
# were obtained, and so on the synthesis queries when the target synthesized them.
SHADOW_FIELDS = frozenset(
    {"population", "population_features", "references", "keep", "ref_population", "keep_population"}
)


@dataclass(frozen=True)
class QueryCall:
    """One ``BlackBox.query`` call (see the module docstring)."""

    index: int  # the call's position among the box's calls
    purpose: str
    by_kind: dict[str, int]  # model queries per kind: "base" and the PROBE_KINDS (robustness ... augmented)
    per_record: np.ndarray  # (n,) int64: model queries made around each record; sums to ``queries``
    records: np.ndarray  # (n,) int64: each record's index into the dataset, -1 when synthetic/unknown
    inputs: list[tuple[str, np.ndarray]] | None = field(default=None, repr=False)  # (kind, (b, d) float32)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def queries(self) -> int:
        return int(sum(self.by_kind.values()))


@dataclass(frozen=True)
class AttackQueries:
    """The queries to the target one attack relies on: total model queries, the distinct dataset
    records among them, the synthetic (made-up) records queried, and the queries per purpose."""

    queries: int
    records: int
    synthetic: int
    by_purpose: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return {
            "queries": self.queries,
            "records": self.records,
            "synthetic": self.synthetic,
            "by_purpose": dict(self.by_purpose),
        }


def relies_on(attack: Attack | type[Attack], purpose: str) -> bool:
    """Whether ``attack`` relies on the calls of ``purpose``: "candidates" always (its scores are about
    them); "population" when it needs the target's signals on the population (``needs`` has
    "population"); "synthesis" when it needs anything derived from the population/shadow records
    (``SHADOW_FIELDS``: e.g. Shokri's shadow models, LiRA's references, trained on them); any other
    purpose: yes (unknown calls are counted, never hidden)."""
    if purpose == "population":
        return "population" in attack.needs
    if purpose == "synthesis":
        return bool(attack.needs & SHADOW_FIELDS)
    return True


def attack_queries(attack: Attack | type[Attack], calls: Sequence[QueryCall]) -> AttackQueries:
    """The queries ``attack`` relies on among ``calls``.

    Rule: over the calls it relies on (``relies_on``), the base queries (one per record queried) plus the
    queries of the probes it reads (``attack.reads`` among robustness, boundary, perturbation, augmented;
    the probe queries for probes it does not read are not its own). ``records``: distinct dataset indices (>= 0)
    queried in those calls; ``synthetic``: records with index -1 queried in them.
    """
    reads = [k for k in PROBE_KINDS if k in attack.reads]
    total = 0
    by_purpose: dict[str, int] = {}
    indices = []
    synthetic = 0
    for call in calls:
        if not relies_on(attack, call.purpose):
            continue
        q = call.by_kind.get("base", 0) + sum(call.by_kind.get(k, 0) for k in reads)
        total += q
        by_purpose[call.purpose] = by_purpose.get(call.purpose, 0) + q
        indices.append(call.records[call.records >= 0])
        synthetic += int(np.sum(call.records < 0))
    distinct = len(np.unique(np.concatenate(indices))) if indices else 0
    return AttackQueries(total, distinct, synthetic, by_purpose)


def check_budget(budget: int | None) -> None:
    """Raise ValueError unless ``budget`` is None or an integer >= 0."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0):
        raise ValueError(f"query_budget must be None or an integer >= 0, got {budget!r}")


def stream(calls: Sequence[QueryCall]) -> np.ndarray:
    """Every logged input, in the order sent: (N, d) float32 (raises ValueError when not logged)."""
    batches = []
    for call in calls:
        if call.inputs is None:
            raise ValueError(f"calls: call {call.index} ({call.purpose}) kept no inputs (BlackBox log=False)")
        batches += [x for _, x in call.inputs]
    if not batches:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(batches)


def stream_labels(calls: Sequence[QueryCall]) -> np.ndarray:
    """The "purpose/kind" of every row of ``stream(calls)``, e.g. "candidates/base", "population/robustness"."""
    out = []
    for call in calls:
        if call.inputs is None:
            raise ValueError(f"calls: call {call.index} ({call.purpose}) kept no inputs (BlackBox log=False)")
        out += [np.full(len(x), f"{call.purpose}/{kind}", dtype=object) for kind, x in call.inputs]
    return np.concatenate(out) if out else np.zeros(0, dtype=object)
