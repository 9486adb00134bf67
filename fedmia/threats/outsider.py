"""The outsider: black-box queries to the final model, its own population data, the public recipe."""

from __future__ import annotations

import numpy as np

from fedmia.data import ReferenceDesign
from fedmia.threats.base import BlackBox, Observation, ReferenceTrainer, reference_knowledge
from fedmia.training import Records


class Outsider:
    """Knows the candidate records (not their membership), owns population data, and can train
    reference models with the target's recipe. Sees the final model as a black box only."""

    name = "outsider"

    def __init__(
        self,
        model: BlackBox,
        candidates: Records,
        population: Records,
        *,
        n_references: int,
        trainer: ReferenceTrainer | None,
        rng: np.random.Generator,
        train_size: int,
        layout: str = "paired",
        candidate_index: np.ndarray | None = None,
        population_index: np.ndarray | None = None,
    ) -> None:
        self._model = model
        self._candidates = candidates
        self._population = population
        self._n_references = n_references
        self._trainer = trainer
        self._rng = rng
        self._train_size = train_size
        self._layout = layout
        self._candidate_index = candidate_index  # the records' indices into the dataset, for the query log
        self._population_index = population_index  # (None: -1, synthetic or unknown)
        self.design: ReferenceDesign | None = None  # set by observe()

    def observe(self) -> Observation:
        knowledge, self.design = reference_knowledge(
            self._model.query(self._population, purpose="population", index=self._population_index),
            self._candidates,
            self._population,
            self._n_references,
            self._trainer,
            self._rng,
            self._train_size,
            self._layout,
        )
        target = self._model.query(self._candidates, purpose="candidates", index=self._candidate_index)
        return Observation(target, knowledge)
