"""Observers that reduce each round's view to per-record signals as it arrives (streaming)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmia.fl.recording import decode_view, encode_view
from fedmia.fl.views import RoundView, StateDict
from fedmia.signals import compute_signals
from fedmia.training import ModelSpec, Records


class RoundBuffer:
    """Per-round arrays of one shape kept in one block (rows = rounds), grown by doubling.

    ``array()`` is a view of the rows so far, so the attack stage reads the whole history without
    the second copy that stacking a list of rounds would make (with 100 clients x 50 rounds that
    copy was most of the peak memory).
    """

    def __init__(self, capacity: int = 16) -> None:
        self._data: np.ndarray | None = None
        self._n = 0
        self._capacity = max(1, capacity)

    def append(self, row: np.ndarray) -> None:
        if self._data is None:
            self._data = np.empty((self._capacity, *row.shape), dtype=row.dtype)
        elif self._n == len(self._data):
            grown = np.empty((2 * len(self._data), *row.shape), dtype=self._data.dtype)
            grown[: self._n] = self._data
            self._data = grown
        self._data[self._n] = row
        self._n += 1

    def array(self) -> np.ndarray:
        if self._data is None:
            raise ValueError("no round recorded yet")
        return self._data[: self._n]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array()[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.array()) if self._n else iter(())


class ClientRows:
    """Per-client rows over rounds, stored sparsely: only the clients observed in each round.

    Logically a (rounds, clients, n) array with NaN where a client was not observed; physically one
    (observed rows, n) block plus each row's round and client. With 1,000 clients sampled at fraction
    0.1 the dense layout was 90% NaN (960 MB per signal at 20 rounds x 12,000 records, three signals);
    this one holds the 10% that exist. Readers take the columns they need: ``dense(cols)`` is the
    logical array restricted to records ``cols``, ``client(c, cols)`` one client's (rounds, cols).
    """

    def __init__(self, num_clients: int, width: int, capacity: int = 16, dtype: type = np.float32) -> None:
        """``width``: records per row; ``capacity``: rounds to expect (storage grows past it)."""
        self.num_clients = num_clients
        self.width = width
        self._rounds = 0
        self._capacity_rounds = max(1, capacity)
        self._data = np.empty((0, width), dtype=dtype)  # (rows, width), the first _n_rows in use
        self._round = np.empty(0, dtype=np.int64)  # each row's round index
        self._client = np.empty(0, dtype=np.int64)  # each row's client
        self._n_rows = 0

    def append(self, ids: Sequence[int] | np.ndarray, rows: np.ndarray) -> None:
        """One round: ``rows[i]`` is client ``ids[i]``'s row (a round may observe nobody: no ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.asarray(rows)
        if rows.ndim != 2 or len(rows) != len(ids):
            raise ValueError(f"expected one row per client id ({len(ids)}), got rows of shape {rows.shape}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_clients or len(np.unique(ids)) != len(ids)):
            raise ValueError(f"client ids must be distinct and in [0, {self.num_clients}), got {ids.tolist()}")
        if rows.shape[1] != self.width:
            raise ValueError(f"rows have {rows.shape[1]} records, expected {self.width}")
        need = self._n_rows + len(ids)
        if need > len(self._data):
            # room for the remaining rounds at this round's count, at least doubling
            guess = self._n_rows + len(ids) * max(1, self._capacity_rounds - self._rounds)
            size = max(need, guess, 2 * len(self._data))
            grown = np.empty((size, self.width), dtype=self._data.dtype)
            grown[: self._n_rows] = self._data[: self._n_rows]
            self._data = grown
            self._round = np.resize(self._round, size)
            self._client = np.resize(self._client, size)
        if len(ids):
            self._data[self._n_rows : need] = rows
            self._round[self._n_rows : need] = self._rounds
            self._client[self._n_rows : need] = ids
        self._n_rows = need
        self._rounds += 1

    def __len__(self) -> int:
        return self._rounds

    def round_rows(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Round ``r``'s (client ids, rows); negative ``r`` counts from the last round."""
        r = range(self._rounds)[r]
        at = np.flatnonzero(self._round[: self._n_rows] == r)
        return self._client[at], self._data[at]

    def dense(self, cols: np.ndarray | slice | None = None) -> np.ndarray:
        """The logical (rounds, clients, len(cols)) array, NaN where a client was not observed."""
        picked = self._data[: self._n_rows][:, slice(None) if cols is None else cols]
        out = np.full((self._rounds, self.num_clients, picked.shape[1]), np.nan, dtype=picked.dtype)
        out[self._round[: self._n_rows], self._client[: self._n_rows]] = picked
        return out

    def client(self, c: int, cols: np.ndarray | slice | None = None) -> np.ndarray:
        """Client ``c``'s (rounds, len(cols)) rows, NaN in the rounds it was not observed in."""
        mine = np.flatnonzero(self._client[: self._n_rows] == c)
        picked = self._data[mine][:, slice(None) if cols is None else cols]
        out = np.full((self._rounds, picked.shape[1]), np.nan, dtype=picked.dtype)
        out[self._round[mine]] = picked
        return out

    def __getitem__(self, r: int) -> np.ndarray:
        """Round ``r`` as a dense (clients, n) array (NaN rows for clients not observed)."""
        ids, rows = self.round_rows(r)
        out = np.full((self.num_clients, self.width), np.nan, dtype=self._data.dtype)
        out[ids] = rows
        return out


@dataclass
class Trajectory:
    """Per-record signals over rounds: (rounds, n) for the global model, (rounds, clients, n) per client.

    Per client, the rounds in which a client was not sampled (or failed) read as NaN; only the observed
    rows are stored (``ClientRows``). Float32 keeps the footprint at observed rows x records x 4 bytes per
    signal, independent of the number of parameters.
    """

    signals: tuple[str, ...] = ("loss", "logit_conf", "true_prob")
    # per client only what the server's attacks read (threats/federated.py): each signal kept per client
    # costs observed rows x records x 4 bytes (160 MB at 100 clients x 50 rounds x 8,000 records)
    client_signals: tuple[str, ...] = ("loss", "logit_conf")
    capacity: int = 16  # rounds to allocate for up front (the federation's round count)
    rounds: list[int] = field(default_factory=list)
    global_model: dict[str, RoundBuffer] = field(default_factory=dict)  # signal -> rounds x (n,)
    clients: dict[str, ClientRows] = field(default_factory=dict)  # signal -> (rounds, C, n), observed rows only
    aggregate: dict[str, RoundBuffer] = field(default_factory=dict)  # global after each round, (n,)

    def add(self, part: str, signal: str, row: np.ndarray) -> None:
        """One round's row of the global model's or the aggregate's signal."""
        if part == "clients":
            raise ValueError("per-client rows go through add_clients")
        getattr(self, part).setdefault(signal, RoundBuffer(self.capacity)).append(row)

    def add_clients(self, signal: str, num_clients: int, ids: Sequence[int] | np.ndarray, rows: np.ndarray) -> None:
        """One round's rows of ``signal`` for the clients ``ids`` observed in it (rows (len(ids), n))."""
        if signal not in self.clients:
            self.clients[signal] = ClientRows(num_clients, rows.shape[1], self.capacity, rows.dtype.type)
        self.clients[signal].append(ids, rows)

    def as_arrays(self, part: str) -> dict[str, np.ndarray]:
        """Views (rounds, ...) of each signal; no copy. Per client, the dense (rounds, C, n) arrays are a
        copy: readers that need a few records take ``clients[signal].dense(cols)`` instead."""
        if part == "clients":
            return {k: v.dense() for k, v in self.clients.items() if len(v)}
        return {k: v.array() for k, v in getattr(self, part).items() if len(v)}


_PARTS = ("global_model", "clients", "aggregate")


def _observed_rows(v: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A checkpointed round's (client ids, rows). Checkpoints written before the sparse layout hold the
    dense (clients, n) array and no ids: the observed clients are the rows with a finite value."""
    if "client_ids" in meta:
        return np.asarray(meta["client_ids"], dtype=np.int64), v
    ids = np.flatnonzero(np.isfinite(v).any(axis=1))
    return ids, v[ids]


class SignalObserver:
    """Evaluates the models of each round's view on a fixed record set and keeps only the signals.

    ``global_before`` of round r is what every sampled client received (a client's view);
    each update is one client's local model (the server's view); ``global_after`` is the
    aggregate, all a secure-aggregation server sees.
    """

    def __init__(self, spec: ModelSpec, records: Records, num_clients: int, rounds: int = 16) -> None:
        self._model = spec.build(0)
        self._records = records
        self._num_clients = num_clients
        self.trajectory = Trajectory(capacity=rounds)

    def _signals(self, state: StateDict) -> dict[str, np.ndarray]:
        self._model.load_state_dict(state)
        s = compute_signals(self._model, *self._records)
        return {k: getattr(s, k).astype(np.float32) for k in self.trajectory.signals}

    def on_round(self, view: RoundView) -> None:
        t = self.trajectory
        t.rounds.append(view.server_round)
        for k, v in self._signals(view.global_before).items():
            t.add("global_model", k, v)
        if view.global_after is not None:
            for k, v in self._signals(view.global_after).items():
                t.add("aggregate", k, v)
        n = len(self._records[1])
        ids = [u.partition_id for u in view.updates]
        per_client = {k: np.empty((len(ids), n), dtype=np.float32) for k in t.client_signals}
        for i, u in enumerate(view.updates):
            for k, v in self._signals(u.state).items():
                if k in per_client:
                    per_client[k][i] = v
        for k, v in per_client.items():
            t.add_clients(k, self._num_clients, ids, v)

    def round_delta(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The last round's arrays, to checkpoint; ``replay`` appends them back. Per client, the observed
        clients' rows, with their ids in the meta."""
        t = self.trajectory
        arrays = {f"{part}/{k}": v[-1] for part in ("global_model", "aggregate") for k, v in getattr(t, part).items()}
        ids: list[int] = []
        for k, rows in t.clients.items():
            got, arrays[f"clients/{k}"] = rows.round_rows(-1)
            ids = got.tolist()
        return arrays, {"round": t.rounds[-1], "client_ids": ids}

    def replay(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        t = self.trajectory
        t.rounds.append(int(meta["round"]))
        for key, v in arrays.items():
            part, _, k = key.partition("/")
            if part == "clients":
                t.add_clients(k, self._num_clients, *_observed_rows(v, meta))
            elif part in _PARTS:
                t.add(part, k, v)


def mean_state(states: list[StateDict], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (the FedAvg oracle used by tests and in-process baselines)."""
    total = float(sum(weights))
    return {
        k: sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True)).float() for k in states[0]
    }


def _flat(state: StateDict, names: list[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).float() for k in names])


class GradientObserver:
    """Per round: each target record's loss gradient g_x at the global model, compared with each client's
    update (Li et al. 2023, ICLR: "Effective passive membership inference attacks in federated learning
    against overparameterized models"). Keeps three arrays per round:

    - ``cosine`` (C, n): cos(g_x, s_c), s_c = global - local_c the client's descent step; a member's
      gradient points along its own client's step;
    - ``difference`` (C, n): d = ||s_c|| - ||s_c - g_x||, how much of the step the record's gradient explains;
    - ``norm`` (n,): ||g_x||, the white-box gradient-norm signal. One row per round, not per client: every
      client of a round starts from the same global model, so g_x is the same for all of them. A view for
      client c masks the rounds c was not observed in (e.g. where ``cosine[:, c]`` is NaN).

    Only the sampled clients' rows are stored (``ClientRows``): unsampled clients read as NaN; a round
    without any update stores no rows and a NaN norm (no gradient pass).

    The difference without cancellation. With ||s - g||^2 = ||s||^2 - 2 s.g + ||g||^2,

        ||s|| - ||s - g|| = (||s||^2 - ||s - g||^2) / (||s|| + ||s - g||) = (2 s.g - ||g||^2) / (||s|| + ||s - g||).

    The left form subtracts two nearly equal numbers when ||g|| << ||s|| (a record's gradient against a
    client's whole step, the usual case): in float32 the relative error is ~1e-7 ||s|| / d and the result
    is 0 or noise. The right form has no such subtraction (the denominator is a sum of non-negative terms),
    and it is evaluated in float64: steps, per-record gradients (computed in the model's float32, then cast)
    and their dot products. Steps are held in float64 (U x parameters x 8 bytes); rows are stored as float32,
    which keeps the relative precision of small values. With ``difference=False`` (no attack reads it) only the
    cosine and the norm are kept, and they are computed in float32 (within 1e-5 of the float64 path, tested).

    Gradients are computed in record chunks with torch.func, so memory stays at chunk x parameters.
    """

    def __init__(
        self,
        spec: ModelSpec,
        records: Records,
        num_clients: int,
        chunk: int = 256,
        rounds: int = 16,
        difference: bool = True,
    ) -> None:
        from torch.func import functional_call, grad, vmap

        self._model = spec.build(0).eval()  # gradients of the deterministic (inference-mode) loss: no dropout
        self._names = [n for n, p in self._model.named_parameters() if p.requires_grad]
        self._x = torch.as_tensor(records[0])
        self._y = torch.as_tensor(records[1])
        self._num_clients = num_clients
        self._chunk = chunk
        n = len(self._y)
        self.cosine = ClientRows(num_clients, n, rounds)  # (rounds, C, n), the observed clients' rows
        self.difference = ClientRows(num_clients, n, rounds)  # the same; left empty when no attack reads it
        self._keep_difference = difference
        self.norm = RoundBuffer(rounds)  # rounds x (n,)

        def loss_one(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(self._model, params, (x[None],))
            return torch.nn.functional.cross_entropy(out, y[None])

        self._per_record_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))

    @staticmethod
    def gradient_difference(dots: torch.Tensor, step_norm: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
        """||s|| - ||s - g|| as (2 s.g - ||g||^2) / (||s|| + ||s - g||), from dots (U, b) = s_u.g_b,
        step_norm (U,) = ||s_u|| and grad_sq (b,) = ||g_b||^2; pass float64. 0 where s = g = 0."""
        num = 2.0 * dots - grad_sq[None, :]
        rest = (step_norm[:, None] ** 2 - 2.0 * dots + grad_sq[None, :]).clamp_min(0.0).sqrt()  # ||s - g||
        den = step_norm[:, None] + rest
        return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)

    def on_round(self, view: RoundView) -> None:
        n = len(self._y)
        ids = [u.partition_id for u in view.updates]
        cos = np.full((len(ids), n), np.nan, dtype=np.float32)  # row i: client ids[i]
        diff = np.full((len(ids), n), np.nan, dtype=np.float32) if self._keep_difference else None
        gnorm_row = np.full(n, np.nan, dtype=np.float32)
        if view.updates:
            base = _flat(view.global_before, self._names).double()
            # float64 where the difference is kept (see above); the cosine alone is computed in float32:
            # its error, ~1e-6 of the largest |s.g| / (||s|| ||g||) (tested), is far below the spread of the
            # cosines across records, and float32 halves the buffer and the GEMM's time (2.1 s -> 1 s a
            # round at 100 clients x 8,000 records x 90k parameters)
            work = torch.float64 if self._keep_difference else torch.float32
            steps = torch.stack([base - _flat(u.state, self._names).double() for u in view.updates]).to(work)  # (U, P)
            step_norm = steps.norm(dim=1)  # (U,)
            params = {k: view.global_before[k].float() for k in self._names}
            buffer = torch.empty(min(self._chunk, n), steps.shape[1], dtype=work)  # reused per chunk
            for a in range(0, n, self._chunk):
                with torch.no_grad():
                    g = self._per_record_grad(params, self._x[a : a + self._chunk], self._y[a : a + self._chunk])
                b = len(g[self._names[0]])
                gflat, col = buffer[:b], 0  # (b, P): each parameter's gradients, cast in one copy
                for k in self._names:
                    width = g[k][0].numel()
                    gflat[:, col : col + width].copy_(g[k].reshape(b, -1))
                    col += width
                dots = steps @ gflat.T  # (U, b)
                gnorm = torch.linalg.vector_norm(gflat, dim=1)  # (b,), without a (b, P) temporary
                c = dots / (step_norm[:, None] * gnorm[None, :]).clamp_min(torch.finfo(work).tiny)
                cos[:, a : a + len(gnorm)] = c.numpy()
                if diff is not None:
                    d = self.gradient_difference(dots, step_norm, gnorm * gnorm)  # ||g||^2 from the norm
                    diff[:, a : a + len(gnorm)] = d.numpy()
                gnorm_row[a : a + len(gnorm)] = gnorm.numpy()
        self.cosine.append(ids, cos)
        if diff is not None:
            self.difference.append(ids, diff)
        self.norm.append(gnorm_row)

    def round_delta(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The last round's rows (observed clients only, their ids in the meta) and gradient norms."""
        ids, cos = self.cosine.round_rows(-1)
        delta = {"cosine": cos, "norm": self.norm[-1]}
        if self._keep_difference:
            delta["difference"] = self.difference.round_rows(-1)[1]
        return delta, {"client_ids": ids.tolist()}

    def replay(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.cosine.append(*_observed_rows(arrays["cosine"], meta))
        if self._keep_difference and "difference" in arrays:
            self.difference.append(*_observed_rows(arrays["difference"], meta))
        # checkpoints written before ``norm`` existed: NaN, as for a round without updates
        self.norm.append(arrays.get("norm", np.full(len(self._y), np.nan, dtype=np.float32)))


class LatestModels:
    """Keeps each client's most recent local model and the global model it started from.

    Memory: clients x parameters (not x rounds). The server's single-model attacks and its
    reference models use these at the end of the federation.
    """

    def __init__(self) -> None:
        self.local: dict[int, StateDict] = {}
        self.round_of: dict[int, int] = {}
        self.start: dict[int, StateDict] = {}  # round -> global_before, only rounds still referenced
        self.final_aggregate: StateDict | None = None
        self._last: RoundView | None = None

    def on_round(self, view: RoundView) -> None:
        self._last = view
        self.final_aggregate = view.global_after
        if not view.updates:
            return
        self.start[view.server_round] = view.global_before
        for u in view.updates:
            self.local[u.partition_id] = u.state
            self.round_of[u.partition_id] = view.server_round
        live = set(self.round_of.values())
        for r in [r for r in self.start if r not in live]:
            del self.start[r]

    def round_delta(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The last round's whole view (``fedmia.fl.recording.encode_view``: its starting global model, the
        aggregate and each reply's local model): the recording ``fedmia attack`` reads."""
        assert self._last is not None, "round_delta() before any round"
        return encode_view(self._last)

    def replay(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.on_round(decode_view(arrays, meta))
