"""Batches of real image–caption pairs for the training loop, step by step, through a torch
DataLoader (`collate` of `captions.py`: unreadable images dropped, None for a batch of none).

- Map-style data (COCO, a table of pairs): the batch of step s on rank r is a pure function of
  (seed, s, r): epoch e's order is a permutation drawn from (seed, e), cut into steps of
  world × batch_size pairs (`StepSampler`). A run resumed at step s reads exactly what an
  unbroken run reads from step s on, whatever the number of DataLoader workers.
- WebDataset shards stream: every pass reads the shards in an order drawn from (seed, the step
  the stream started at, the pass). A resumed run starts a new pass there, so it does not see
  the same images as an unbroken run would: resuming from shards is not bit-exact.

    stream = Stream(open_pairs(annotations=..., images=..., resolution=32), 64, seed=0)
    stream.start(step)      # at the step the run starts or resumes at
    pair = stream.next()    # Pair(images (B, 3, R, R), captions) or None: nothing readable
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from .captions import Pair, ShardPairs, collate


class StepSampler(Sampler[list[int]]):
    """The index lists of steps `start`, `start + 1`, … (without end) of rank `rank` of `world`:
    epoch e is a permutation of range(n) drawn from (seed, e), each step takes the next
    world × batch_size indices, rank r the r-th batch_size of them; the tail of an epoch too
    short for a step is left out."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world = rank, world
        self.steps_per_epoch = n // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{n} image-caption pairs are fewer than one step's batch "
                f"({batch_size} × {world} ranks): a smaller batch or more data"
            )

    def __iter__(self) -> Iterator[list[int]]:
        step, epoch, order = self.start, -1, np.arange(0)
        while True:
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, np.random.default_rng([self.seed, e]).permutation(self.n)
            lo = (i * self.world + self.rank) * self.batch_size
            yield order[lo : lo + self.batch_size].tolist()
            step += 1


class Stream:
    """The batches of steps start, start + 1, … of one dataset of pairs, for one rank."""

    def __init__(
        self,
        dataset: Dataset | ShardPairs,
        batch_size: int,
        seed: int,
        workers: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.workers, self.rank, self.world = workers, rank, world
        self._batches: Iterator[Pair | None] | None = None

    def start(self, step: int) -> None:
        """Begin (again) at `step`: the next `next()` is that step's batch."""
        if isinstance(self.dataset, ShardPairs):
            self._batches = self._passes(step)
        else:
            sampler = StepSampler(
                len(self.dataset), self.batch_size, self.seed, step, self.rank, self.world
            )
            loader = DataLoader(
                self.dataset, batch_sampler=sampler, num_workers=self.workers, collate_fn=collate
            )
            self._batches = iter(loader)

    def _passes(self, step: int) -> Iterator[Pair | None]:
        """Pass after pass over the shards, each in an order drawn from (seed, step, pass)."""
        for n_pass in range(2**62):
            order = np.random.default_rng([self.seed, step, n_pass]).integers(2**31)
            self.dataset.set_order(int(order))
            loader = DataLoader(
                self.dataset, self.batch_size, num_workers=self.workers, collate_fn=collate
            )
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise UserError(f"the shards hold no readable pairs ({self.dataset.urls[0]}, …)")

    def next(self) -> Pair | None:
        """The batch of the next step: Pair(images (B, 3, R, R), captions), B ≤ batch_size
        (unreadable images dropped), or None when none of its images could be read."""
        if self._batches is None:
            raise RuntimeError("Stream.next() before Stream.start(step)")
        return next(self._batches)

    def close(self) -> None:
        """Stop the DataLoader's workers."""
        self._batches = None
