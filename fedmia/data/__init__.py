"""Datasets (one global record index each), membership plans and partitions."""

from fedmia.data import files as _files  # noqa: F401  (registers file-based datasets)
from fedmia.data.datasets import DATASETS, Dataset, load_dataset
from fedmia.data.plan import (
    DESIGNS,
    MembershipPlan,
    ReferenceDesign,
    make_plan,
    paired_design,
    reference_keep,
    shadow_design,
    target_memberships,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "MembershipPlan",
    "ReferenceDesign",
    "load_dataset",
    "make_plan",
    "paired_design",
    "target_memberships",
    "shadow_design",
    "DESIGNS",
    "reference_keep",
]
