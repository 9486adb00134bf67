"""Client partitions of the member pool, made by flwr-datasets' partitioners over the global index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmia.errors import InputError
from fedmia.registry import Registry

# Each factory takes (num_partitions, seed, **params) and returns an flwr-datasets Partitioner.
PARTITIONERS: Registry[Any] = Registry("partitioner", exclude=("num_partitions", "seed"))

GROUP_COLUMN = "group"  # the column of natural ids (FEMNIST's writers) that a 'natural' partitioner reads


@dataclass(frozen=True)
class PartitionTraits:
    """``groups``: the partitioner splits by the records' natural ids (``Dataset.groups``), which the
    caller must supply as the column ``GROUP_COLUMN``."""

    groups: bool = False


def partition_traits(name: str) -> PartitionTraits:
    traits = PARTITIONERS.traits(name)
    return traits if isinstance(traits, PartitionTraits) else PartitionTraits()


@PARTITIONERS.register("iid")
def _iid(num_partitions: int, seed: int) -> Any:
    """Equal-size random shares of the member pool (flwr-datasets' IidPartitioner)."""
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner shuffles with a fixed internal seed; we pre-shuffle the pool with ours instead.
    return IidPartitioner(num_partitions=num_partitions)


@PARTITIONERS.register("dirichlet")
def _dirichlet(num_partitions: int, seed: int, alpha: float = 0.5, min_partition_size: int = 1) -> Any:
    """Label skew: each class split among clients by Dirichlet(alpha) shares; smaller alpha, more skew."""
    from flwr_datasets.partitioner import DirichletPartitioner

    if not alpha > 0:
        raise InputError(f"federation.partition alpha must be > 0, got {alpha}")
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=True,
        seed=seed,
    )


@PARTITIONERS.register("pathological")
def _pathological(num_partitions: int, seed: int, classes_per_client: int = 2) -> Any:
    """Each client holds only ``classes_per_client`` labels (McMahan et al. 2017's pathological non-IID)."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    if not classes_per_client >= 1:  # flwr-datasets silently treats 0 or less as 1
        raise InputError(f"federation.partition classes_per_client must be >= 1, got {classes_per_client}")
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_client,
        class_assignment_mode="first-deterministic",
        seed=seed,
    )


@PARTITIONERS.register("shard")
def _shard(num_partitions: int, seed: int, shards_per_client: int = 2) -> Any:
    """Records sorted by label, cut into shards; each client gets ``shards_per_client`` shards."""
    from flwr_datasets.partitioner import ShardPartitioner

    if not shards_per_client >= 1:
        raise InputError(f"federation.partition shards_per_client must be >= 1, got {shards_per_client}")
    return ShardPartitioner(
        num_partitions=num_partitions, partition_by="label", num_shards_per_partition=shards_per_client, seed=seed
    )


@PARTITIONERS.register("natural", traits=PartitionTraits(groups=True))
def _natural(num_partitions: int, seed: int) -> Any:
    """Each client holds the records of one natural group (FEMNIST's writer; flwr-datasets'
    NaturalIdPartitioner); with fewer clients than groups, each client holds several whole groups."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    return NaturalIdPartitioner(partition_by=GROUP_COLUMN)


def client_of_group(groups: np.ndarray, num_clients: int, seed: int) -> np.ndarray:
    """Each record's client when whole groups go to clients: the distinct groups, in a seeded random order,
    are cut into ``num_clients`` runs of equal length (± 1 group), so each client is one group when there
    are as many clients as groups, and ⌊G/C⌋ or ⌈G/C⌉ whole groups otherwise (client sizes in records then
    vary, as the writers' do). Raises InputError with more clients than groups."""
    distinct, inverse = np.unique(groups, return_inverse=True)
    if num_clients > len(distinct):
        raise InputError(
            f"federation.num_clients={num_clients} exceeds the {len(distinct)} natural groups (writers) among "
            "the member records: each client holds at least one whole group"
        )
    order = np.random.default_rng(seed).permutation(len(distinct))
    client = np.empty(len(distinct), dtype=np.int64)
    for c, chunk in enumerate(np.array_split(order, num_clients)):
        client[chunk] = c
    return client[inverse]


def partition_records(
    records: np.ndarray,
    labels: np.ndarray,
    num_clients: int,
    name: str,
    seed: int,
    groups: np.ndarray | None = None,
    **params: Any,
) -> list[np.ndarray]:
    """Split ``records`` (global indices) among ``num_clients`` with the named partitioner.

    Deterministic in ``seed``; every record goes to at most one client (partitioners such as
    'pathological' may leave some records unassigned, which are then dropped from the pool).
    ``groups``: the records' natural ids (aligned with ``records``), which a partitioner with the
    ``groups`` trait ('natural') needs; NaturalIdPartitioner then makes one partition per client-group
    (``client_of_group``), numbered in the order of those ids, so partition i is client i.
    """
    from datasets import Dataset as HFDataset

    if num_clients < 1:
        raise InputError(f"federation.num_clients must be >= 1, got {num_clients}")
    if num_clients > len(records):
        raise InputError(
            f"federation.num_clients={num_clients} exceeds the {len(records)} member records to share among them"
        )
    order = np.random.default_rng(seed).permutation(len(records))
    partitioner = PARTITIONERS.create(name, num_partitions=num_clients, seed=seed % (2**32), **params)
    columns = {"record": records[order].astype(np.int64), "label": labels[order].astype(np.int64)}
    if partition_traits(name).groups:
        if groups is None:
            raise InputError(
                f"federation.partition {name!r} splits by natural groups (writers), and this dataset has none: "
                "use femnist, or hf-disk with data.params.groups naming a column of ids"
            )
        if len(groups) != len(records):
            raise ValueError(f"{len(groups)} group ids for {len(records)} records")
        columns[GROUP_COLUMN] = client_of_group(np.asarray(groups)[order], num_clients, seed)
    partitioner.dataset = HFDataset.from_dict(columns)
    try:
        parts = [np.asarray(partitioner.load_partition(i)["record"], dtype=np.int64) for i in range(num_clients)]
    except ValueError as exc:
        raise InputError(f"federation.partition {name!r} cannot split {len(records)} records: {exc}") from None
    except ZeroDivisionError:  # e.g. more shards than records: flwr-datasets' shard size rounds to 0
        raise InputError(
            f"federation.partition {name!r} cannot split {len(records)} records among {num_clients} clients "
            f"with {params}: too few records"
        ) from None
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise InputError(f"federation.partition {name!r} left client(s) {empty[:5]} with no records")
    return parts
