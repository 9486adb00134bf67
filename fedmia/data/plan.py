"""The MembershipPlan: who trained on which records. It is the ground truth of an audit.

Only training code and the audit read a plan's membership; attacking parties get the
candidate records (``plan.targets``) in a fixed shuffled order and never their labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmia.errors import InputError


@dataclass(frozen=True)
class MembershipPlan:
    """Disjoint index sets over one dataset's global record index."""

    n_records: int
    members: np.ndarray  # train the target (centralized) and form the client pool (federated)
    nonmembers: np.ndarray  # held out; scored beside the members
    population: np.ndarray  # the attacker's own data, disjoint from the targets
    test: np.ndarray  # utility only
    targets: np.ndarray  # members and non-members, shuffled: what attacks score, in this order
    clients: tuple[np.ndarray, ...] = field(default=())  # federated: each client's records
    # The owner's held-out records (``with_holdout``): early stopping's validation set and adversarial
    # regularization's reference set D'. Never trained on and never candidates: neither member nor non-member.
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # federated: each client's own share of ``validation`` and ``reference`` (empty tuples: not carved per client)
    client_validation: tuple[np.ndarray, ...] = field(default=())
    client_reference: tuple[np.ndarray, ...] = field(default=())

    def __post_init__(self) -> None:
        parts = [self.members, self.nonmembers, self.population, self.test, self.validation, self.reference]
        allidx = np.concatenate(parts)
        if len(np.unique(allidx)) != len(allidx):
            raise ValueError("plan index sets overlap")
        if allidx.size and (allidx.min() < 0 or allidx.max() >= self.n_records):
            raise ValueError("plan index out of range")
        if self.clients:
            pooled = np.sort(np.concatenate(self.clients))
            if not np.array_equal(pooled, np.sort(self.members)):
                raise ValueError("client partitions must be disjoint and cover the members")
        if np.isin(self.targets, np.concatenate([self.validation, self.reference])).any():
            raise ValueError("held-out records cannot be candidates: they are neither members nor non-members")
        for name in ("client_validation", "client_reference"):
            per_client = getattr(self, name)
            if per_client and len(per_client) != len(self.clients):
                raise ValueError(f"{name} needs one entry per client")

    def is_member(self, records: np.ndarray) -> np.ndarray:
        """Ground truth for the audit: which of ``records`` trained the target."""
        return np.isin(records, self.members)

    def client_of(self, records: np.ndarray) -> np.ndarray:
        """Ground truth for source inference: each record's client id, -1 for non-members."""
        owner = np.full(self.n_records, -1, dtype=np.int64)
        for cid, recs in enumerate(self.clients):
            owner[recs] = cid
        return owner[records]

    def with_clients(self, clients: list[np.ndarray]) -> MembershipPlan:
        """The plan with client partitions of the members. Members a partitioner left unassigned
        are dropped (they train nobody), so the members stay exactly the union of the clients."""
        pooled = np.sort(np.concatenate(clients)).astype(np.int64)
        if not np.isin(pooled, self.members).all():
            raise ValueError("client partitions may only hold member records")
        targets = self.targets[np.isin(self.targets, pooled) | np.isin(self.targets, self.nonmembers)]
        if len(self.validation) or len(self.reference):
            raise ValueError("partition the members among clients before holding records out (with_holdout)")
        return MembershipPlan(
            self.n_records,
            pooled,
            self.nonmembers,
            self.population,
            self.test,
            targets,
            tuple(np.sort(np.asarray(c, dtype=np.int64)) for c in clients),
        )

    def with_holdout(self, validation: float, reference: float, rng: np.random.Generator) -> MembershipPlan:
        """The plan with the owner's held-out records carved out of the members: a share ``validation``
        of them (early stopping's validation set V), then a share ``reference`` of the rest (adversarial
        regularization's reference set D'); per client when the members are partitioned (each client
        holds out its own share, the same in every round). The carved records leave the members, the
        clients and the candidates, as the test split does: the target never trains on them, so they are
        neither members nor non-members (DESIGN rule 12), and the members stay exactly what the target
        (every client) trains on. Both shares 0: the plan itself. Counts per owner of n records:
        round(share * n), at least one, leaving at least one (``holdout_count`` of ``train()``)."""
        if validation == 0 and reference == 0:
            return self
        if len(self.validation) or len(self.reference):
            raise ValueError("the plan already holds records out")
        owners = self.clients or (self.members,)
        kept, vals, refs = [], [], []
        for o, records in enumerate(owners):
            perm = rng.permutation(records)
            try:
                n_val = _held_count(len(perm), validation)
                n_ref = _held_count(len(perm) - n_val, reference)
            except ValueError as exc:
                who = f"client {o}" if self.clients else "the members"
                raise ValueError(f"{who}: {exc}") from None
            vals.append(np.sort(perm[:n_val]))
            refs.append(np.sort(perm[n_val : n_val + n_ref]))
            kept.append(np.sort(perm[n_val + n_ref :]))
        held = np.concatenate(vals + refs)
        per_client = bool(self.clients)
        return MembershipPlan(
            self.n_records,
            np.sort(np.concatenate(kept)),
            self.nonmembers,
            self.population,
            self.test,
            self.targets[~np.isin(self.targets, held)],
            tuple(kept) if per_client else (),
            np.sort(np.concatenate(vals)).astype(np.int64),
            np.sort(np.concatenate(refs)).astype(np.int64),
            tuple(vals) if per_client else (),
            tuple(refs) if per_client else (),
        )


def _held_count(n: int, fraction: float) -> int:
    """round(fraction * n) records, at least one and leaving at least one; 0 for a zero fraction (the
    count ``train()``'s ``holdout_count`` gives: data cannot import training)."""
    if fraction <= 0:
        return 0
    if not fraction < 1:
        raise ValueError(f"a held-out share must be below 1, got {fraction}")
    if n < 2:
        raise ValueError(f"cannot hold out records from {n} record(s): need at least 2")
    return min(max(int(round(fraction * n)), 1), n - 1)


def make_plan(
    n_records: int,
    *,
    members: float,
    nonmembers: float,
    population: float,
    test: float,
    rng: np.random.Generator,
) -> MembershipPlan:
    """Split ``n_records`` into disjoint sets with the given fractions (summing to <= 1)."""
    fracs = {"members": members, "nonmembers": nonmembers, "population": population, "test": test}
    if any(f < 0 for f in fracs.values()) or sum(fracs.values()) > 1 + 1e-9:
        raise InputError(f"split fractions must be >= 0 and sum to <= 1, got {fracs}")
    perm = rng.permutation(n_records)
    exact = [f * n_records for f in fracs.values()]
    sizes = [int(round(e)) for e in exact]
    # rounding each fraction up can ask for one or two records more than there are (0.3/0.3/0.3/0.1 of 569
    # rounds to 570): the fractions sum to <= 1, so the excess is rounding's, and it comes off the splits
    # rounded up the most
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - sizes[i])[: max(0, sum(sizes) - n_records)]:
        sizes[i] -= 1
    for name, size in zip(fracs, sizes, strict=True):
        if size < 1 and name != "test":
            raise InputError(f"data.split: {name!r} is empty with {n_records} records")
    bounds = np.cumsum([0, *sizes])
    m, nm, pop, te = (np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    targets = rng.permutation(np.concatenate([m, nm]))
    return MembershipPlan(n_records, m, nm, pop, te, targets)


def reference_keep(n_models: int, n_records: int, rng: np.random.Generator, n_in: int | None = None) -> np.ndarray:
    """Keep-matrix (n_models, n_records): which records each reference/shadow model trains on.

    With ``n_in`` = None or half the records, models come in complementary pairs over a random
    half, so every record is IN for exactly half of the models (LiRA/RMIA's paired design).
    Otherwise each model trains on its own random ``n_in`` records (matching the target's
    training-set size), so a record is IN for about ``n_in / n_records`` of the models.
    """
    keep = np.zeros((n_models, n_records), dtype=bool)
    if n_in is None or n_in == n_records // 2:
        for k in range(0, n_models, 2):
            half = rng.permutation(n_records) < n_records // 2
            keep[k] = half
            if k + 1 < n_models:
                keep[k + 1] = ~half
        return keep
    if not 0 < n_in < n_records:
        raise ValueError(f"n_in={n_in} must lie strictly between 0 and {n_records}")
    for k in range(n_models):
        keep[k, rng.choice(n_records, size=n_in, replace=False)] = True
    return keep


@dataclass(frozen=True)
class ReferenceDesign:
    """Which records each of a party's K reference models trains on: over its candidates (``keep``,
    (K, n)) and over its own population records (``keep_population``, (K, m))."""

    keep: np.ndarray
    keep_population: np.ndarray

    def summary(self) -> dict[str, int | float]:
        """K and the min / median number of IN and OUT references per candidate (for metrics.json)."""
        n_in = self.keep.sum(axis=0)
        n_out = self.keep.shape[0] - n_in
        return {
            "references": int(self.keep.shape[0]),
            "in_min": int(n_in.min()) if n_in.size else 0,
            "in_median": float(np.median(n_in)) if n_in.size else 0.0,
            "out_min": int(n_out.min()) if n_out.size else 0,
            "out_median": float(np.median(n_out)) if n_out.size else 0.0,
        }


def paired_design(
    n_models: int, n_candidates: int, n_population: int, train_size: int, rng: np.random.Generator
) -> ReferenceDesign:
    """LiRA's paired design on the candidates, each reference trained on ``train_size`` records.

    Models come in complementary pairs over the candidates (model 2k trains on a random half, model
    2k+1 on the other half), so every candidate is IN for half of the models (± 1 with an odd K or an
    odd number of candidates). Each model then fills up to ``train_size`` records with random population
    records (the party's own data). When half the candidates exceed ``train_size``, each model keeps a
    random ``train_size`` of its half, and a candidate is IN for fewer than half (``summary`` says so).
    """
    if n_candidates < 2:
        raise ValueError(f"a paired design needs at least 2 candidates, got {n_candidates}")
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size}")
    keep = np.zeros((n_models, n_candidates), dtype=bool)
    keep_pop = np.zeros((n_models, n_population), dtype=bool)
    for k in range(0, n_models, 2):
        half = rng.permutation(n_candidates) < (n_candidates + rng.integers(2)) // 2  # odd n: either side
        for j, side in enumerate((half, ~half)):
            if k + j >= n_models:
                break
            members = np.flatnonzero(side)
            if len(members) > train_size:
                members = rng.choice(members, size=train_size, replace=False)
            keep[k + j, members] = True
            fill = min(train_size - len(members), n_population)
            if fill > 0:
                keep_pop[k + j, rng.choice(n_population, size=fill, replace=False)] = True
    return ReferenceDesign(keep, keep_pop)


def target_memberships(n_candidates: int, n_members: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Memberships of ``count`` further target models over the same ``n_candidates`` candidates, each of
    exactly ``n_members`` of them (the run's own target's count), in LiRA's paired design (Carlini et al.
    2022, Sec. VI): models come in pairs drawn from one random permutation π of the candidates, model 2k
    on π[:m] and model 2k+1 on π[m:2m] (m = ``n_members``), so with m = n/2 the pair is complementary and
    every candidate is IN for half of the models. With 2m > n the second model takes π[m:] and is filled up
    to m from π[:m] at random (candidates IN more often than half; no design can do better). Returns a
    (count, n_candidates) bool matrix."""
    if not 1 <= n_members <= n_candidates:
        raise ValueError(f"n_members must lie in [1, {n_candidates}], got {n_members}")
    out = np.zeros((count, n_candidates), dtype=bool)
    for k in range(0, count, 2):
        perm = rng.permutation(n_candidates)
        out[k, perm[:n_members]] = True
        if k + 1 < count:
            second = perm[n_members : 2 * n_members]
            short = n_members - len(second)
            if short > 0:
                second = np.concatenate([second, rng.choice(perm[:n_members], size=short, replace=False)])
            out[k + 1, second] = True
    return out


def shadow_design(
    n_models: int, n_candidates: int, n_population: int, train_size: int, rng: np.random.Generator
) -> ReferenceDesign:
    """Shokri et al. 2017's shadow design: every model trains on shadow data only (the party's population
    or synthesized records), never on a candidate: a random ``min(train_size, n_population // 2)`` of the
    population each (the target's training-set size, as in the paper, capped so that every shadow leaves
    records OUT). Candidates are OUT of every model: LiRA runs offline on it, Shokri's attack model learns
    from the population rows alone.
    """
    if n_population < 2:
        raise ValueError(f"a shadow design needs at least 2 shadow records, got {n_population}")
    if train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {train_size}")
    size = min(train_size, n_population // 2)
    keep_pop = np.zeros((n_models, n_population), dtype=bool)
    for k in range(n_models):
        keep_pop[k, rng.choice(n_population, size=size, replace=False)] = True
    return ReferenceDesign(np.zeros((n_models, n_candidates), dtype=bool), keep_pop)


# How a party lays out its references over candidates and population (audit.reference_design).
DESIGNS = {"paired": paired_design, "shadow": shadow_design}
