"""Data-noise couplings for conditional flow matching.

Every coupling has one interface: a minibatch of data ``x`` (B, *shape) and its example indices
``index`` (B,) go in; a :class:`CoupledBatch` comes out, whose row ``i`` pairs ``z[i]`` with ``x[i]``,
plus :class:`CouplingStats` (swaps, mean pairing cost before and after the assignment).

- :class:`IndependentCoupling`   fresh noise, paired at random (I-CFM).
- :class:`MinibatchOTCoupling`   fresh noise, exact assignment inside the batch (OT-CFM); forgets.
- :class:`LoomCoupling`          each example owns ``num_caches`` noise seeds; the exact assignment
  permutes the chosen seeds and writes them back, so pairings improve across batches (LOOM-CFM,
  Algorithm 1 of the paper).

All randomness comes from a generator the coupling owns and saves in ``state_dict()``: two couplings
built with the same seed and fed the same batches return identical noise and seed tables. That is
what makes resume exact and lets every DDP rank run the same assignment on the all-gathered batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

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
    """

    swaps: int
    cost_before: float
    cost_after: float


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


def exact_assignment(costs: Tensor | np.ndarray) -> np.ndarray:
    """Exact minimum-cost assignment of a square cost matrix (Hungarian / LAPJV via scipy).

    costs: (B, B) tensor (any device) or host array -> perm (B,) int64 with data row i paired to noise column
    perm[i]. scipy solves on the CPU in float64 (it widens float32 itself: one conversion, no round trip through
    a float64 tensor) and releases the GIL while it works, so a pairing thread runs beside the training step.
    """
    host = costs.detach().cpu().numpy() if isinstance(costs, Tensor) else np.asarray(costs)
    if host.ndim != 2 or host.shape[0] != host.shape[1]:
        raise ValueError(f"exact_assignment needs a square cost matrix, got shape {tuple(host.shape)}")
    rows, cols = linear_sum_assignment(host)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm.astype(np.int64, copy=False)


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


Lap = Callable[[str], None]  # called with a sub-step's name right after it finishes (timing hooks)


def _no_lap(part: str) -> None:
    """The default timing hook: nothing."""


def _assign(x: Tensor, z: Tensor, cost: CostName, lap: Lap = _no_lap) -> tuple[np.ndarray, CouplingStats]:
    """Solve the exact assignment of noise z to data x; return perm and the step's statistics.

    The cost matrix reaches the host once; the assignment and the statistics both read that copy.
    """
    costs = cost_matrix(x, z, cost).cpu().numpy()
    lap("cost matrix")
    perm = exact_assignment(costs)
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
        return CoupledBatch(z=z[torch.as_tensor(perm, device=z.device)], x=x, stats=stats)


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
    """

    name = "loom"
    UNSEEN = -1  # marks a table slot whose seed is drawn at first visit

    def __init__(
        self,
        num_examples: int,
        num_caches: int = 1,
        seed: int = 0,
        cost: CostName = "l2",
        no_swaps: bool = False,
        seed_init: Literal["upfront", "first_visit"] = "upfront",
    ) -> None:
        super().__init__(seed=seed, cost=cost)
        if num_examples < 1 or num_caches < 1:
            raise ValueError(f"need num_examples >= 1 and num_caches >= 1, got {num_examples}, {num_caches}")
        if seed_init not in ("upfront", "first_visit"):
            raise ValueError(f"unknown seed_init {seed_init!r}; use 'upfront' or 'first_visit'")
        self.no_swaps = no_swaps
        self.seed_init = seed_init
        self.seeds = torch.full((num_examples, num_caches), self.UNSEEN, dtype=torch.int64)
        if seed_init == "upfront":
            self.redraw()

    @property
    def num_examples(self) -> int:
        return self.seeds.shape[0]

    @property
    def num_caches(self) -> int:
        return self.seeds.shape[1]

    def redraw(self) -> None:
        """Replace every seed in the table by a fresh one (the only operation that changes the multiset)."""
        self.seeds = torch.randint(SEED_HIGH, self.seeds.shape, generator=self.generator)

    def choose_caches(self, batch_size: int) -> Tensor:
        """Step 1a: one cache per batch row, uniformly at random -> (B,) int64."""
        return torch.randint(self.num_caches, (batch_size,), generator=self.generator)

    def pair(self, x: Tensor, index: Tensor) -> CoupledBatch:
        index = index.cpu().long()
        if int(index.max()) >= self.num_examples or int(index.min()) < 0:
            raise ValueError(
                f"example index out of range [0, {self.num_examples}): build LoomCoupling with "
                "num_examples = len(dataset) (flipped copies included)"
            )
        caches = self.choose_caches(len(index))
        self._draw_unseen(index, caches)
        seeds = self.seeds[index, caches]
        z = noise_from_seeds(seeds, tuple(x.shape[1:]), x.device)  # step 1b
        self.lap("noise from seeds")
        if self.no_swaps:
            cost = cost_matrix_diagonal(x, z, self.cost).mean().item()
            return CoupledBatch(z=z, x=x, stats=CouplingStats(0, cost, cost))
        perm, stats = _assign(x, z, self.cost, self.lap)  # step 2
        self.seeds[index, caches] = seeds[torch.as_tensor(perm)]  # step 3: write the seeds back
        z = z[torch.as_tensor(perm, device=z.device)]  # step 4: the re-paired batch
        self.lap("write-back")
        return CoupledBatch(z=z, x=x, stats=stats)

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if tuple(state["seeds"].shape) != tuple(self.seeds.shape):
            raise ValueError(
                f"seed table in the state has shape {tuple(state['seeds'].shape)} but this coupling "
                f"expects {tuple(self.seeds.shape)} (num_examples, num_caches); the dataset size, flip "
                "setting or num_caches differs from the run that saved it"
            )
        self.seeds = state["seeds"].clone()
        self.no_swaps = state["no_swaps"]
        self.seed_init = state["seed_init"]


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
) -> Coupling:
    """Build a coupling by name ("independent", "minibatch_ot", "loom")."""
    if name == "independent":
        return IndependentCoupling(seed=seed, cost=cost)
    if name == "minibatch_ot":
        return MinibatchOTCoupling(seed=seed, cost=cost)
    if name == "loom":
        return LoomCoupling(num_examples, num_caches, seed=seed, cost=cost, no_swaps=no_swaps, seed_init=seed_init)
    raise ValueError(f"unknown coupling {name!r}; use one of {COUPLINGS}")


# ---------------------------------------------------------------------------------------------
# Whole-dataset views (for convergence studies and "train after convergence")
# ---------------------------------------------------------------------------------------------


def total_pairing_cost(coupling: LoomCoupling, data: Tensor, cost: CostName | None = None) -> float:
    """Mean cost over all (example, cache) pairs of the table: the quantity Theorem 1 says never rises.

    data: (N, *shape) with data[i] the example of index i. Raises ValueError while a first-visit table still has
    unvisited slots (see :meth:`LoomCoupling.noise`).
    """
    cost = cost or coupling.cost
    index = torch.arange(coupling.num_examples)
    total = 0.0
    for cache in range(coupling.num_caches):
        z = coupling.noise(index, cache, data.device, tuple(data.shape[1:]))
        total += cost_matrix_diagonal(data, z, cost).sum().item()
    return total / (coupling.num_examples * coupling.num_caches)


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
