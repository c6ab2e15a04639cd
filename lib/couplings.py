"""Data-noise couplings for conditional flow matching.

Every coupling has one interface: a minibatch of data ``x`` (B, *shape) and its example indices
``index`` (B,) go in; a :class:`CoupledBatch` comes out, whose row ``i`` pairs ``z[i]`` with ``x[i]``,
plus :class:`CouplingStats` (swaps, mean pairing cost before and after the assignment).

- :class:`IndependentCoupling`   fresh noise, paired at random (I-CFM).
- :class:`MinibatchOTCoupling`   fresh noise, exact assignment inside the batch (OT-CFM); forgets.
- :class:`LoomCoupling`          each example owns ``num_caches`` noise seeds; the exact assignment
  permutes the chosen seeds and writes them back, so pairings improve across batches (LOOM-CFM,
  Algorithm 1 of the paper). Options against a finite noise table overfitting (notebook 12): per-visit
  refresh, mixing in fresh noise, jitter, growing caches; :meth:`LoomCoupling.redraw` for periodic redraw.

All randomness comes from a generator the coupling owns and saves in ``state_dict()``: two couplings
built with the same seed and fed the same batches return identical noise and seed tables. That is
what makes resume exact and lets every DDP rank run the same assignment on the all-gathered batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lib import assignment

CostName = Literal["l2", "sqeuclidean"]
COST_NAMES: tuple[str, ...] = ("l2", "sqeuclidean")
# Seeds are drawn from [0, SEED_HIGH). torch's CPU generator (mt19937) keeps only the low 32 bits of a
# seed (seeds s and s + 2**32 give the same noise), so a wider range would only pretend to more noises.
SEED_HIGH = 2**32


@dataclass(frozen=True)
class CouplingStats:
    """What one coupling step did.

    swaps: number of batch rows whose noise changed partner (0 for couplings without assignment).
    cost_before / cost_after: mean pairing cost of the batch before and after the assignment, in the
    coupling's cost (``l2``: ||x - z||, ``sqeuclidean``: ||x - z||^2).
    fresh_rows: LOOM only, rows whose noise was not a stored one as it was: refreshed or mixed in
    (jitter, which touches every row, is not counted).
    """

    swaps: int
    cost_before: float
    cost_after: float
    fresh_rows: int = 0


@dataclass(frozen=True)
class CoupledBatch:
    """A re-paired minibatch: row i of ``z`` (B, *shape) is the noise paired with row i of ``x``."""

    z: Tensor
    x: Tensor
    stats: CouplingStats


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def cost_matrix(x: Tensor, z: Tensor, cost: CostName = "l2", exact: bool = False) -> Tensor:
    """Pairwise pairing costs C[i, j] = c(x_i, z_j).

    x: (B, *shape) data, z: (B', *shape) noise -> (B, B') on x's device.
    ``l2`` is the plain Euclidean distance (what the released code minimises); ``sqeuclidean`` is
    the squared distance of the paper's objective. The training path is one float32 matrix product,
    ||x||^2 + ||z||^2 - 2 x.z with the norms computed first (:func:`squared_distances`); ``exact``
    (metrics) uses float64 and direct differences, which stay accurate for near-identical points.
    """
    check_cost(cost)
    if exact:
        d = torch.cdist(x.flatten(1).double(), z.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist")
        return d if cost == "l2" else d.square()
    d2 = squared_distances(x.flatten(1).float(), z.flatten(1).float())
    return d2.sqrt_() if cost == "l2" else d2


def squared_distances(x: Tensor, z: Tensor) -> Tensor:
    """||x_i - z_j||^2 for x (B, D), z (B', D) float32 -> (B, B') as ONE matrix product (addmm) onto the outer sum
    of the precomputed squared norms: no (B, B', D) difference and no padded copies of x and z (torch.cdist's
    matrix-product path concatenates both); clamped at 0, which float32 cancellation can undershoot."""
    norms = torch.linalg.vector_norm(x, dim=1).square_()[:, None] + torch.linalg.vector_norm(z, dim=1).square_()
    return torch.addmm(norms, x, z.T, alpha=-2.0).clamp_min_(0.0)


def exact_assignment(costs: Tensor | np.ndarray, dim: int = 0) -> np.ndarray:
    """Exact minimum-cost assignment of a square cost matrix (lib.assignment: lapjv for points of ``dim`` >= 8 values,
    proven to give scipy's permutation, else scipy itself; dim 0: unknown, scipy).

    costs: (B, B) tensor (any device) or host array -> perm (B,) int64 with data row i paired to noise column
    perm[i]. Solved on the CPU in float64, with the GIL released, so a pairing thread runs beside the training step.
    """
    host = costs.detach().cpu().numpy() if isinstance(costs, Tensor) else np.asarray(costs)
    return assignment.exact_assignment(host, dim)


def rows_of(z: Tensor, perm: np.ndarray | Tensor) -> Tensor:
    """z[perm] for z (B, *shape) and a permutation perm (B,): one index_select, several times faster on the CPU than
    advanced indexing of rows of thousands of values (the same values)."""
    return torch.index_select(z, 0, torch.as_tensor(perm, device=z.device))


def check_cost(cost: str) -> None:
    """Raise a ValueError naming the valid costs if ``cost`` is not one of them."""
    if cost not in COST_NAMES:
        raise ValueError(f"unknown cost {cost!r}; use one of {COST_NAMES}")


def check_batch(x: Tensor, index: Tensor) -> None:
    """Validate that ``index`` (B,) labels the B rows of ``x`` (B, *shape) once each."""
    if index.ndim != 1 or index.shape[0] != x.shape[0]:
        raise ValueError(
            f"index must have shape (B,) matching the batch: got index {tuple(index.shape)} for data "
            f"{tuple(x.shape)}; pass one example index per row of x"
        )
    if index.unique().numel() != index.numel():
        raise ValueError(
            "the batch repeats an example index; LOOM writes seeds back per example, so draw batches "
            "without replacement (a shuffled epoch, drop_last=True)"
        )


def noise_from_seeds(seeds: Tensor, shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    """Regenerate the Gaussian noise owned by each seed.

    seeds: (B,) int64 -> z: (B, *shape) float32 on ``device``; row b is N(0, I) drawn by a
    ``torch.Generator`` on ``device`` seeded with seeds[b]. The same seed gives the same noise on
    every call on the same device type (CPU and CUDA generators use different algorithms).

    One generator is re-seeded per row, writing straight into the row. On the CPU this is the released code's
    noise bit for bit, and its cost is the drawing itself (mt19937 and Box-Muller, as for one batched
    ``torch.randn`` of the same size; re-seeding is under a tenth of it), so no batched form could be both
    faster and identical. On CUDA each row is one small Philox kernel launch (about B launches a step); a batched
    CUDA form would change every CUDA seed's noise, and with it reflow pairs generated on a GPU, so it is not done.
    """
    device = torch.device(device)
    z = torch.empty((len(seeds), *shape), device=device)
    generator = torch.Generator(device=device)
    for row, seed in zip(z.unbind(0), seeds.tolist()):
        generator.manual_seed(seed)
        torch.randn(shape, generator=generator, device=device, out=row)
    return z


def _fresh_noise(like: Tensor, generator: torch.Generator) -> Tensor:
    """Draw N(0, I) noise shaped like ``like`` (B, *shape) on its device from the coupling's generator.

    The coupling's generator lives on the CPU (its state is saved in checkpoints); one draw from it
    seeds a device generator, so noise is made where the data is without a host-to-device copy.
    """
    device_generator = torch.Generator(device=like.device)
    device_generator.manual_seed(int(torch.randint(SEED_HIGH, (1,), generator=generator)))
    return torch.randn(like.shape, generator=device_generator, device=like.device)


# Default budget for the noises of a LOOM table kept in memory, per process (each DDP rank holds its own copy): CIFAR-10
# with flips and the released 4 caches is 100,000 x 4 x 3,072 float32 = 4.6 GiB. lib.train sets it per run
# (TrainConfig.noise_memory_gib).
NOISE_MEMORY_GIB = 8.0


class NoiseMemory:
    """The noises of a LOOM seed table kept in host memory, so a step gathers them instead of regenerating them.

    ``noise`` (N x C, *shape) float32 rows and ``made_from`` (N x C,) int64: row k holds noise_from_seeds(made_from[k])
    as generated on ``device_type`` (CPU and CUDA generators differ), or nothing where made_from[k] is EMPTY.
    ``row`` (N, C) points each table slot at its noise row. The write-back permutes seeds among a batch's slots and
    :meth:`follow` permutes their row pointers the same way (B integers, no noise moves). :meth:`gather` regenerates
    exactly the slots whose seed is not the one their row was made from (never filled, refreshed, redrawn, grown): a
    cache keyed by the seed itself, so the noise it returns is the regenerated noise bit for bit, whatever changed the
    table. Derived from the seeds, it is never saved: a resumed run rebuilds it from the checkpoint's seed table.
    """

    EMPTY = -1

    def __init__(self, slots: tuple[int, int], shape: tuple[int, ...], device_type: str) -> None:
        self.noise = torch.empty((slots[0] * slots[1], *shape))
        self.made_from = torch.full((slots[0] * slots[1],), self.EMPTY, dtype=torch.int64)
        self.row = torch.arange(slots[0] * slots[1]).view(slots)
        self.shape, self.device_type = shape, device_type

    @staticmethod
    def nbytes(slots: tuple[int, int], shape: tuple[int, ...]) -> int:
        """Bytes of the float32 noises of ``slots`` (N, C) examples x caches of ``shape``."""
        return 4 * slots[0] * slots[1] * math.prod(shape)

    def fits(self, shape: tuple[int, ...], device: torch.device) -> bool:
        """Whether this memory holds noises of ``shape`` made on ``device``'s type."""
        return self.shape == shape and self.device_type == device.type

    def fill(self, seeds: Tensor, device: torch.device, chunk: int = 4096) -> None:
        """Generate the noise of every seeded slot of ``seeds`` (N, C) (EMPTY = UNSEEN slots stay empty), in chunks
        of ``chunk`` rows so a CUDA table needs little device memory."""
        index, caches = torch.nonzero(seeds != self.EMPTY, as_tuple=True)
        for start in range(0, len(index), chunk):
            i, c = index[start : start + chunk], caches[start : start + chunk]
            self._make(self.row[i, c], seeds[i, c], device)

    def gather(self, index: Tensor, caches: Tensor, seeds: Tensor, device: torch.device) -> Tensor:
        """The noise of slots (index[b], caches[b]) whose seeds are ``seeds`` (B,) -> (B, *shape) on ``device``:
        gathered where the slot's row was made from that seed, regenerated (and kept) where it was not."""
        rows = self.row[index, caches]
        stale = self.made_from[rows] != seeds
        if bool(stale.any()):
            self._make(rows[stale], seeds[stale], device)
        return torch.index_select(self.noise, 0, rows).to(device)  # index_select: ~7x faster than noise[rows] here

    def follow(self, index: Tensor, caches: Tensor, perm: Tensor) -> None:
        """The write-back gave slot (index[b], caches[b]) the seed of slot (index[perm[b]], caches[perm[b]]) (B,):
        each noise row follows its seed."""
        self.row[index, caches] = self.row[index, caches][perm]

    def _make(self, rows: Tensor, seeds: Tensor, device: torch.device) -> None:
        """Rows ``rows`` (K,) now hold the noise of ``seeds`` (K,), generated on ``device``."""
        self.noise[rows] = noise_from_seeds(seeds, self.shape, device).cpu()
        self.made_from[rows] = seeds


def visits_per_noise(steps: int, global_batch: int, num_examples: int, num_caches: int) -> float:
    """V = steps x global batch / (examples x caches): how often training sees each stored noise.

    The quantity notebook 12 studies: a finite LOOM table overfits once V passes a boundary. With
    random flips as extra examples, ``num_examples`` counts the flipped copies (each owns its seeds).
    """
    if min(steps, global_batch, num_examples, num_caches) < 1:
        raise ValueError(
            f"need positive steps, batch, examples and caches, got {steps}, {global_batch}, "
            f"{num_examples}, {num_caches}"
        )
    return steps * global_batch / (num_examples * num_caches)


def caches_for_visits(visits_at_one_cache: float, boundary_v: float) -> int:
    """The rule of notebook 12: the fewest caches C that keep V = visits_at_one_cache / C at or below ``boundary_v``.

    ``visits_at_one_cache`` is V with one cache: for the released pipeline epochs / 2 (each epoch visits every image
    once, as itself or as its flipped copy, which owns its own seeds).
    """
    if visits_at_one_cache <= 0 or boundary_v <= 0:
        raise ValueError(f"need positive visits and boundary, got {visits_at_one_cache} and {boundary_v}")
    return max(1, math.ceil(visits_at_one_cache / boundary_v))


Lap = Callable[[str], None]  # called with a sub-step's name right after it finishes (timing hooks)


def _no_lap(part: str) -> None:
    """The default timing hook: nothing."""


def _assign(x: Tensor, z: Tensor, cost: CostName, lap: Lap = _no_lap) -> tuple[np.ndarray, CouplingStats]:
    """Solve the exact assignment of noise z to data x; return perm and the step's statistics.

    The cost matrix reaches the host once; the assignment and the statistics both read that copy.
    """
    costs = cost_matrix(x, z, cost).cpu().numpy()
    lap("cost matrix")
    perm = exact_assignment(costs, math.prod(x.shape[1:]))
    lap("assignment")
    rows = np.arange(len(perm))
    before = float(costs[rows, rows].mean(dtype=np.float64))
    after = float(costs[rows, perm].mean(dtype=np.float64))
    swaps = int((perm != rows).sum())
    return perm, CouplingStats(swaps=swaps, cost_before=before, cost_after=after)


# ---------------------------------------------------------------------------------------------
# Couplings
# ---------------------------------------------------------------------------------------------


class Coupling(ABC):
    """Shared interface: ``coupling(x, index) -> CoupledBatch``; state in ``state_dict()``."""

    name: str = "coupling"

    def __init__(self, seed: int = 0, cost: CostName = "l2") -> None:
        check_cost(cost)
        self.cost: CostName = cost
        self.generator = torch.Generator().manual_seed(seed)
        # Timing hook: called with each sub-step's name as it finishes, so lib.experiments.benchmarks times the
        # real step in parts instead of a copy of it.
        self.lap: Lap = _no_lap

    def __call__(self, x: Tensor, index: Tensor) -> CoupledBatch:
        """Pair the batch ``x`` (B, *shape) whose example indices are ``index`` (B,) with noise."""
        check_batch(x, index)
        return self.pair(x, index)

    @abstractmethod
    def pair(self, x: Tensor, index: Tensor) -> CoupledBatch:
        """Coupling-specific pairing of a validated batch."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this coupling is."""
        return {"name": self.name, "cost": self.cost, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (of a coupling of the same kind)."""
        if state.get("name") != self.name:
            raise ValueError(
                f"coupling state is for {state.get('name')!r} but this coupling is {self.name!r}; "
                "build the coupling named in the checkpoint's config"
            )
        self.cost = state["cost"]
        self.generator.set_state(state["generator"])


class IndependentCoupling(Coupling):
    """I-CFM: fresh noise each step, paired with the data in the order drawn."""

    name = "independent"

    def pair(self, x: Tensor, index: Tensor) -> CoupledBatch:
        z = _fresh_noise(x, self.generator)
        cost = cost_matrix_diagonal(x, z, self.cost).mean().item()
        return CoupledBatch(z=z, x=x, stats=CouplingStats(swaps=0, cost_before=cost, cost_after=cost))


class MinibatchOTCoupling(Coupling):
    """OT-CFM ("w/o saving local reassignments"): fresh noise, exact assignment, then forgotten."""

    name = "minibatch_ot"

    def pair(self, x: Tensor, index: Tensor) -> CoupledBatch:
        z = _fresh_noise(x, self.generator)
        perm, stats = _assign(x, z, self.cost, self.lap)
        return CoupledBatch(z=rows_of(z, perm), x=x, stats=stats)


@dataclass(frozen=True)
class LoomOptions:
    """LOOM's options against the table overfitting, all off by default (see :class:`LoomCoupling`): the one list
    the coupling, :func:`make_coupling` and the noise-table study (lib.experiments.study) share."""

    refresh_prob: float = 0.0  # phi: each visit redraws the chosen slot's seed with this probability
    mix_prob: float = 0.0  # p: a row gets fresh noise instead of its stored one with this probability
    jitter: float = 0.0  # eps: the returned noise is sqrt(1 - eps^2) z + eps xi
    visit_cap: float = 0.0  # K: growing caches, a new slot once visits per stored noise pass K (0: no growth)
    max_caches: int = 0  # growing caches: at most this many slots per example

    def on(self) -> list[str]:
        """The names of the options that are on."""
        return [f.name for f in fields(self) if getattr(self, f.name)]

    def check(self, num_caches: int) -> None:
        """Refuse options out of range for a table of ``num_caches`` caches, naming the valid range."""
        for name, value in (("refresh_prob", self.refresh_prob), ("mix_prob", self.mix_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, got {value}; use a value in [0, 1]")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(
                f"jitter eps must be in [0, 1) (the stored noise keeps weight sqrt(1 - eps^2)), got {self.jitter}"
            )
        if self.visit_cap < 0:
            raise ValueError(f"visit_cap must be >= 0 (0: the table does not grow), got {self.visit_cap}")
        if self.visit_cap and self.max_caches <= num_caches:
            raise ValueError(
                f"a growing table (visit_cap {self.visit_cap}) needs max_caches > num_caches ({num_caches}), "
                f"got {self.max_caches}"
            )
        if self.max_caches and not self.visit_cap:
            raise ValueError("max_caches only applies to a growing table: set visit_cap too (or drop max_caches)")


class LoomCoupling(Coupling):
    """LOOM-CFM: a seed table (num_examples, num_caches) whose assignment improves across batches.

    Each step (Algorithm 1):
      1. pick one cache per example uniformly and regenerate its noise from the seed;
      2. solve the exact B x B assignment between these noises and the data;
      3. permute the chosen seeds accordingly and write them back (the pairing persists);
      4. return the re-paired batch for the flow-matching step.

    Options: ``cost`` ("l2", the released code's choice, or "sqeuclidean", the paper's formula);
    ``no_swaps`` keeps every example's noise fixed ("fixed source w/o reassignments" ablation);
    ``seed_init`` draws the seeds "upfront" or at an example's "first_visit" (the paper's wording;
    same distribution, but the table then says which examples have been seen). :meth:`redraw`
    replaces every seed (the appendix's periodic refresh).

    ``options`` (:class:`LoomOptions`) against the table overfitting (all off by default; off, the coupling draws
    exactly what it drew before they existed). Each keeps the returned noise exactly N(0, I):
      ``refresh_prob`` phi: each visit replaces the chosen slot's seed by a fresh one with probability phi,
        before the assignment (the appendix's per-visit refresh); only those slots change in the multiset.
      ``mix_prob`` p: each row gets fresh noise instead of its stored one with probability p; the fresh
        rows are paired among themselves by an exact assignment and nothing of theirs is stored, the
        table rows re-pair among themselves as usual (the multiset does not change).
      ``jitter`` eps: the returned noise is sqrt(1 - eps^2) z + eps xi with fresh xi, after the
        assignment of the stored z. The jittered noise does not take part in the assignment: the table
        then converges as plain LOOM does (Theorem 1: its cost never rises), and the write-back does not
        depend on throwaway noise; eps is small, so the jittered pairs stay close to the optimal ones.
      ``visit_cap`` K with ``max_caches``: an example whose visits reach K per stored noise gets one
        more cache slot with a fresh seed (up to ``max_caches``), so visits per stored noise stay <= K
        (growing caches); the multiset only gains seeds.
    ``visits`` (N,) counts each example's visits; ``active`` (N,) its caches in use (all ``num_caches``
    unless the table grows; slots beyond are UNSEEN and never used).

    ``noise_memory_gib``: while the table's noises (N x C x shape float32) fit this budget, they are kept in memory
    (:class:`NoiseMemory`, built at the first step) and gathered instead of regenerated: the same values bit for bit,
    at the price of an independent draw. Above it (or at 0), every step regenerates its noise from the seeds.
    """

    name = "loom"
    # Marks a table slot whose seed is drawn at first visit (or a growing table's unused slot); its memory row is empty.
    UNSEEN = NoiseMemory.EMPTY
    # Options a saved state records and a resumed one must agree on (the table's width records max_caches).
    OPTIONS = tuple(f.name for f in fields(LoomOptions) if f.name != "max_caches")

    def __init__(
        self,
        num_examples: int,
        num_caches: int = 1,
        seed: int = 0,
        cost: CostName = "l2",
        no_swaps: bool = False,
        seed_init: Literal["upfront", "first_visit"] = "upfront",
        options: LoomOptions = LoomOptions(),
        noise_memory_gib: float = NOISE_MEMORY_GIB,
    ) -> None:
        super().__init__(seed=seed, cost=cost)
        if num_examples < 1 or num_caches < 1:
            raise ValueError(f"need num_examples >= 1 and num_caches >= 1, got {num_examples}, {num_caches}")
        if seed_init not in ("upfront", "first_visit"):
            raise ValueError(f"unknown seed_init {seed_init!r}; use 'upfront' or 'first_visit'")
        options.check(num_caches)
        if not noise_memory_gib >= 0:
            raise ValueError(
                f"noise_memory_gib is a budget in GiB, got {noise_memory_gib}; use 0 (always from seeds) or more"
            )
        self.no_swaps = no_swaps
        self.seed_init = seed_init
        self.options = options
        width = options.max_caches if options.visit_cap else num_caches
        self.seeds = torch.full((num_examples, width), self.UNSEEN, dtype=torch.int64)
        self.active = torch.full((num_examples,), num_caches, dtype=torch.int64)
        self.visits = torch.zeros(num_examples, dtype=torch.int64)
        self.noise_memory_gib = noise_memory_gib
        self._memory: NoiseMemory | None = None
        if seed_init == "upfront":
            self.redraw()

    @property
    def num_examples(self) -> int:
        return self.seeds.shape[0]

    @property
    def num_caches(self) -> int:
        """Columns of the seed table (a growing table's maximum; ``active`` says how many are in use)."""
        return self.seeds.shape[1]

    @property
    def grows(self) -> bool:
        return self.options.visit_cap > 0

    def redraw(self) -> None:
        """Replace every seed in use by a fresh one (periodic redraw; a growing table's unused slots stay unused)."""
        fresh = torch.randint(SEED_HIGH, self.seeds.shape, generator=self.generator)
        if self.grows:
            fresh[self.stored_slots(as_mask=True).logical_not()] = self.UNSEEN
        self.seeds = fresh
        self._memory = None  # every noise changes: rebuilt whole at the next step

    def stored_slots(self, as_mask: bool = False) -> Tensor:
        """Slots in use: a (N, num_caches) bool mask, or their (example, cache) pairs (K, 2), cache-major."""
        mask = torch.arange(self.num_caches)[None, :] < self.active[:, None]
        return mask if as_mask else mask.t().nonzero()[:, [1, 0]]

    def choose_caches(self, batch_size: int, index: Tensor | None = None) -> Tensor:
        """Step 1a: one cache per batch row, uniformly among the example's caches in use -> (B,) int64."""
        if not self.grows:
            return torch.randint(self.num_caches, (batch_size,), generator=self.generator)
        if index is None:
            raise ValueError("a growing table chooses among each example's own caches: pass index")
        u = torch.rand(batch_size, generator=self.generator)
        return (u * self.active[index]).long().clamp_max(self.active[index] - 1)

    def pair(self, x: Tensor, index: Tensor) -> CoupledBatch:
        index = index.cpu().long()
        if int(index.max()) >= self.num_examples or int(index.min()) < 0:
            raise ValueError(
                f"example index out of range [0, {self.num_examples}): build LoomCoupling with "
                "num_examples = len(dataset) (flipped copies included)"
            )
        self.visits[index] += 1
        if self.grows:
            self._grow(index)
        caches = self.choose_caches(len(index), index)
        self._draw_unseen(index, caches)
        refreshed = self._refresh(index, caches)
        table = self._mixed_rows(len(index)).logical_not()
        rows = slice(None) if bool(table.all()) else table  # the table's rows: all (views, no copies) unless mixing
        index_t, caches_t, x_t = index[rows], caches[rows], x[rows if isinstance(rows, slice) else rows.to(x.device)]
        seeds = self.seeds[index_t, caches_t]
        z = self._noise_of(index_t, caches_t, seeds, x)  # step 1b
        self.lap("noise from seeds")
        if self.no_swaps:
            cost = cost_matrix_diagonal(x_t, z, self.cost).mean().item()
            stats = CouplingStats(0, cost, cost)
        else:
            perm, stats = _assign(x_t, z, self.cost, self.lap)  # step 2
            order = torch.as_tensor(perm)
            self.seeds[index_t, caches_t] = seeds[order]  # step 3: write back
            z = rows_of(z, order)  # step 4: the re-paired batch
            if self._memory is not None:  # each kept noise follows its seed
                self._memory.follow(index_t, caches_t, order)
            self.lap("write-back")
        if not bool(table.all()):
            z = self._with_fresh_rows(x, z, table)
        eps = self.options.jitter
        if eps:
            z = math.sqrt(1.0 - eps**2) * z + eps * _fresh_noise(z, self.generator)
        fresh_rows = int((~table).sum()) + int((refreshed & table).sum())
        return CoupledBatch(z=z, x=x, stats=CouplingStats(stats.swaps, stats.cost_before, stats.cost_after, fresh_rows))

    def _noise_of(self, index: Tensor, caches: Tensor, seeds: Tensor, x: Tensor) -> Tensor:
        """Step 1b: the noise of slots (index[b], caches[b]) holding ``seeds`` (B,) -> (B, *shape) on x's device,
        gathered from memory while the table fits ``noise_memory_gib``, else regenerated (the same values)."""
        memory = self._memory_for(tuple(x.shape[1:]), x.device)
        if memory is None:
            return noise_from_seeds(seeds, tuple(x.shape[1:]), x.device)
        return memory.gather(index, caches, seeds, x.device)

    def _memory_for(self, shape: tuple[int, ...], device: torch.device) -> NoiseMemory | None:
        """The table's noise memory for examples of ``shape`` on ``device`` (built and filled on first use), or None
        when it would not fit the budget."""
        if NoiseMemory.nbytes(tuple(self.seeds.shape), shape) > self.noise_memory_gib * 2**30:
            self._memory = None
        elif self._memory is None or not self._memory.fits(shape, device):
            self._memory = NoiseMemory(tuple(self.seeds.shape), shape, device.type)
            self._memory.fill(self.seeds, device)
        return self._memory

    @property
    def noise_source(self) -> str:
        """Where the last step's noise came from: "memory" (gathered) or "seeds" (regenerated, or no step yet)."""
        return "memory" if self._memory is not None else "seeds"

    def _grow(self, index: Tensor) -> None:
        """Give each example of ``index`` whose visits per stored noise passed ``visit_cap`` one more slot."""
        over_cap = self.visits[index] > self.options.visit_cap * self.active[index]
        full = over_cap & (self.active[index] < self.num_caches)
        grown = index[full]
        if len(grown):
            self.seeds[grown, self.active[grown]] = torch.randint(SEED_HIGH, (len(grown),), generator=self.generator)
            self.active[grown] += 1

    def _refresh(self, index: Tensor, caches: Tensor) -> Tensor:
        """Per-visit refresh: with probability phi a chosen slot gets a fresh seed -> which rows (B,) bool."""
        if not self.options.refresh_prob:
            return torch.zeros(len(index), dtype=torch.bool)
        refreshed = torch.rand(len(index), generator=self.generator) < self.options.refresh_prob
        count = int(refreshed.sum())
        if count:
            self.seeds[index[refreshed], caches[refreshed]] = torch.randint(
                SEED_HIGH, (count,), generator=self.generator
            )
        return refreshed

    def _mixed_rows(self, batch_size: int) -> Tensor:
        """Rows that get fresh noise instead of their stored one (probability ``mix_prob``) -> (B,) bool."""
        if not self.options.mix_prob:
            return torch.zeros(batch_size, dtype=torch.bool)
        return torch.rand(batch_size, generator=self.generator) < self.options.mix_prob

    def _with_fresh_rows(self, x: Tensor, z_table: Tensor, table: Tensor) -> Tensor:
        """The batch's noise (B, *shape): the re-paired table noise in the table rows, fresh noise paired by
        an exact assignment among the other rows (nothing of theirs is stored)."""
        fresh_rows = (~table).to(x.device)
        z = torch.empty_like(x, dtype=z_table.dtype)
        z[table.to(x.device)] = z_table
        x_fresh = x[fresh_rows]
        fresh = _fresh_noise(x_fresh, self.generator)
        if not self.no_swaps and len(x_fresh) > 1:
            perm, _ = _assign(x_fresh, fresh, self.cost)
            fresh = rows_of(fresh, perm)
        z[fresh_rows] = fresh
        return z

    def _draw_unseen(self, index: Tensor, caches: Tensor) -> None:
        """Draw seeds for chosen slots never visited before (only with seed_init='first_visit')."""
        unseen = self.seeds[index, caches] == self.UNSEEN
        if unseen.any():
            fresh = torch.randint(SEED_HIGH, (int(unseen.sum()),), generator=self.generator)
            self.seeds[index[unseen], caches[unseen]] = fresh

    def noise(
        self, index: Tensor, cache: int = 0, device: torch.device | str = "cpu", shape: tuple[int, ...] = ()
    ) -> Tensor:
        """The noise currently paired with examples ``index`` (B,) in ``cache`` -> (B, *shape).

        With seed_init="first_visit" a slot not visited yet has no noise: ValueError naming the examples.
        """
        seeds = self.seeds[index.cpu(), cache]
        unseen = seeds == self.UNSEEN
        if bool(unseen.any()):
            examples = index.cpu()[unseen]
            raise ValueError(
                f"{len(examples)} example(s) (e.g. {examples[:5].tolist()}) have no noise in cache {cache} yet: with "
                "seed_init='first_visit' a seed is drawn when the example is first paired; pair them first (an epoch "
                "of training or converge_pairing), or use seed_init='upfront'"
            )
        return noise_from_seeds(seeds, shape, device)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "seeds": self.seeds.clone(),
            "no_swaps": self.no_swaps,
            "seed_init": self.seed_init,
            "active": self.active.clone(),
            "visits": self.visits.clone(),
            **{name: getattr(self.options, name) for name in self.OPTIONS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if tuple(state["seeds"].shape) != tuple(self.seeds.shape):
            raise ValueError(
                f"seed table in the state has shape {tuple(state['seeds'].shape)} but this coupling "
                f"expects {tuple(self.seeds.shape)} (num_examples, num_caches); the dataset size, flip "
                "setting or num_caches differs from the run that saved it"
            )
        differ = [
            f"{k}: saved {state.get(k, 0.0)!r}, here {getattr(self.options, k)!r}"
            for k in self.OPTIONS
            if state.get(k, 0.0) != getattr(self.options, k)
        ]  # states saved before the options existed: all off
        if differ:
            raise ValueError(
                f"the saved coupling used other table options ({'; '.join(differ)}); "
                "build the coupling with the options of the run that saved it"
            )
        self.seeds = state["seeds"].clone()
        self._memory = None  # derived from the seeds: rebuilt from the restored table at the next step
        self.no_swaps = state["no_swaps"]
        self.seed_init = state["seed_init"]
        # States saved before visit counting: every slot in use, visits unknown (counted from here on).
        self.active = state["active"].clone() if "active" in state else torch.full_like(self.active, self.num_caches)
        self.visits = state["visits"].clone() if "visits" in state else torch.zeros_like(self.visits)


def fixed_pairs_coupling(seeds: Tensor) -> LoomCoupling:
    """Reflow's coupling: example i always gets the noise of seeds[i] (N,), the noise it was generated from.

    A LOOM table with one cache that never swaps, filled with the given seeds.
    """
    coupling = LoomCoupling(len(seeds), 1, no_swaps=True)
    coupling.seeds[:, 0] = seeds
    return coupling


COUPLINGS: tuple[str, ...] = ("independent", "minibatch_ot", "loom")


def make_coupling(
    name: str,
    num_examples: int,
    *,
    num_caches: int = 1,
    seed: int = 0,
    cost: CostName = "l2",
    no_swaps: bool = False,
    seed_init: Literal["upfront", "first_visit"] = "upfront",
    options: LoomOptions = LoomOptions(),
    noise_memory_gib: float = NOISE_MEMORY_GIB,
) -> Coupling:
    """Build a coupling by name ("independent", "minibatch_ot", "loom"); the table options and the noise memory
    budget are LOOM's."""
    if name in ("independent", "minibatch_ot") and options.on():
        raise ValueError(
            f"{sorted(options.on())} are options of the loom noise table; {name!r} draws fresh noise every step"
        )
    if name == "independent":
        return IndependentCoupling(seed=seed, cost=cost)
    if name == "minibatch_ot":
        return MinibatchOTCoupling(seed=seed, cost=cost)
    if name == "loom":
        return LoomCoupling(
            num_examples,
            num_caches,
            seed=seed,
            cost=cost,
            no_swaps=no_swaps,
            seed_init=seed_init,
            options=options,
            noise_memory_gib=noise_memory_gib,
        )
    raise ValueError(f"unknown coupling {name!r}; use one of {COUPLINGS}")


# ---------------------------------------------------------------------------------------------
# Whole-dataset views (for convergence studies and "train after convergence")
# ---------------------------------------------------------------------------------------------


def total_pairing_cost(coupling: LoomCoupling, data: Tensor) -> float:
    """Mean cost over all (example, cache) pairs of the table: the quantity Theorem 1 says never rises.

    data: (N, *shape) with data[i] the example of index i. Raises ValueError while a first-visit table still has
    unvisited slots (see :meth:`LoomCoupling.noise`).
    """
    total = 0.0
    for cache in range(coupling.num_caches):
        index = torch.nonzero(coupling.active > cache)[:, 0]  # every example, unless the table grows
        z = coupling.noise(index, cache, data.device, tuple(data.shape[1:]))
        total += cost_matrix_diagonal(data[index.to(data.device)], z, coupling.cost).sum().item()
    return total / int(coupling.active.sum())


def cost_matrix_diagonal(x: Tensor, z: Tensor, cost: CostName) -> Tensor:
    """Per-pair costs c(x_i, z_i): x, z (N, *shape) -> (N,)."""
    d = (x.flatten(1).float() - z.flatten(1).float()).norm(dim=1)
    return d if cost == "l2" else d.square()


def epoch_batches(num_examples: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One shuffled epoch of disjoint index batches (B,), the last partial batch dropped."""
    return _full_batches(torch.randperm(num_examples, generator=generator), batch_size)


def flipped_epoch_batches(flip_pairs: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """The released epoch: every image once, in shuffled order, as its unflipped or its flipped example with
    probability 1/2 each, cut into disjoint batches (B,) with the last partial batch dropped.

    flip_pairs: (images, 2) int64, row k = [example index of image k, of its flipped copy] (for a dataset of N
    images with flips, [k, k + N]: lib.datasets.IndexedImages.flip_pairs). So an epoch is images // B steps while
    each flipped copy keeps its own example index (its own seeds in LOOM's table). Both draws come from
    ``generator``: the same generator state gives the same epoch (exact resume, identical DDP ranks).
    """
    order = torch.randperm(len(flip_pairs), generator=generator)
    flipped = torch.randint(2, (len(flip_pairs),), generator=generator)
    return _full_batches(flip_pairs[order, flipped], batch_size)


def _full_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """Consecutive disjoint batches (B,) of ``order`` (n,), the last partial batch dropped."""
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def converge_pairing(
    coupling: LoomCoupling,
    data: Tensor,
    batch_size: int,
    max_epochs: int = 100,
    seed: int = 0,
    fetch: Callable[[Tensor], Tensor] | None = None,
) -> list[dict[str, float]]:
    """Run LOOM's re-pairing alone (no training) until an epoch makes no swap.

    data: (N, *shape), or any sized dataset together with ``fetch(index (B,)) -> (B, *shape)``.
    Returns one record per epoch: epoch, swaps, mean cost after the epoch's steps. Used for the
    "train after convergence" ablation and the convergence figure.
    """
    fetch = fetch or data.__getitem__
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(max_epochs):
        swaps, costs = 0, []
        for index in epoch_batches(len(data), batch_size, generator):
            stats = coupling(fetch(index), index).stats
            swaps += stats.swaps
            costs.append(stats.cost_after)
        history.append({"epoch": epoch + 1, "swaps": swaps, "batch_cost": float(np.mean(costs))})
        if swaps == 0:
            break
    return history
