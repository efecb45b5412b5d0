"""Data to batches: one small interface (`Batches`) that the training loop iterates for train, val and test.

Every `Batches` yields (normalized float images, int64 labels) already on the run's device, so the loop does not
know where the data came from. In-memory sets (CIFAR) are held on the device as uint8 (CIFAR-10's 50k images are
150 MB) and augmented there per batch: no worker processes, no host-to-device copy per step. The random draws
(order, crop offsets, flips) come from a CPU `torch.Generator`, so a seed gives the same batches on any device.
Shapes keeps its original DataLoader + flips, drawn from one generator in the same order, so the shipped model's
command still reproduces it bit for bit. Image folders go through a DataLoader with decoding workers.

Under torchrun (`dist`, see `distributed`) each rank gets its share. A training `batch_size` is the GLOBAL batch
of one step: Shapes and CIFAR draw the same order and augmentation on every rank (one seeded stream) and each rank
keeps its strided share of every global batch, so N processes together see exactly the batches of one process;
folders use a DistributedSampler (reshuffled each epoch) with batch_size / N per rank and per-rank worker seeds.
Evaluation sets are split into disjoint strided shares (nothing padded, nothing repeated; eval `batch_size` is
per rank): summing correct and seen over ranks gives exactly the single-process accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..runtime.distributed import Dist, rank_seed, shard_indices
from .folders import ImageFiles, ReportingFiles, stratified_split
from .shapes import normalize

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches:
    """An iterable of (images ready for the model, labels) on `device`; `len()` is the number of batches."""

    device: torch.device
    channels_last: bool = False
    dist: Dist = Dist()
    generator: torch.Generator | None = None  # the CPU generator of the order and augmentation (training)
    epoch: int = 0  # epochs begun (a DistributedSampler's reshuffle counter)

    def state_dict(self) -> dict:
        """Where the draws stand: the generator's state and the epoch count (what `resume` saves)."""
        return {"generator": None if self.generator is None else self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        self.epoch = int(state.get("epoch", 0))

    def _share(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """This rank's strided share of a global training batch (all of it for a single process)."""
        d = self.dist
        return (x[d.rank::d.world_size], y[d.rank::d.world_size]) if d.distributed else (x, y)

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def _out(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt), y.to(self.device, non_blocking=True)


def per_rank_batch(batch_size: int, d: Dist) -> int:
    """A rank's share of a global training batch; the global batch must divide evenly over the ranks."""
    if batch_size % d.world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch of a step and must divide evenly over "
                         f"the {d.world_size} processes (try {max(1, batch_size // d.world_size) * d.world_size})")
    return batch_size // d.world_size


def eval_share(dataset: torch.utils.data.Dataset, d: Dist) -> torch.utils.data.Dataset:
    """This rank's disjoint strided share of an evaluation set (the set itself for a single process)."""
    return torch.utils.data.Subset(dataset, shard_indices(len(dataset), d)) if d.distributed else dataset


def random_flips(x: torch.Tensor, generator: torch.Generator, hflip: float = 0.5) -> torch.Tensor:
    """Flip each image left-right (probability `hflip`) and up-down (0.5) at random: every Shapes class is
    mirror-invariant."""
    r = torch.rand(2, len(x), 1, 1, 1, generator=generator)
    h, v = (r[0] < hflip).to(x.device), (r[1] < 0.5).to(x.device)
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4,
                  hflip: float = 0.5) -> tuple[torch.Tensor, ...]:
    """The CIFAR augmentation of He et al. (zero-pad `pad`, random crop back to size, random left-right flip),
    as one gather on x's device. Returns (images, crop offsets [B, 2] as (top, left) into the padded image,
    flipped [B] bool); the draws come from the CPU `generator`."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    flipped = torch.rand(b, generator=generator) < hflip
    off, flip = offsets.to(x.device), flipped.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = off[:, :1] + ar_h  # [B, H]
    cols = off[:, 1:] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]], offsets, flipped


class ShapesBatches(Batches):
    """Shapes through the original DataLoader: shuffled with `generator`, flipped from the same generator."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None, train: bool = False, dist: Dist = Dist(),
                 hflip: float = 0.5) -> None:
        self.hflip = hflip
        self.normalize, self.device, self.generator, self.train = normalize, device, generator, train
        self.channels_last, self.dist = True, dist
        if train:
            per_rank_batch(batch_size, dist)
        else:
            dataset = eval_share(dataset, dist)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                                                  generator=generator if train else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            if self.train:
                x, y = self._share(random_flips(x, self.generator, self.hflip), y)
            yield self._out(self.normalize(x.to(self.device)), y)


class TensorBatches(Batches):
    """uint8 images [N, C, H, W] held on the device, shuffled, augmented (`pad_crop_flip`) and normalized there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 batch_size: int, device: torch.device, generator: torch.Generator | None = None,
                 train: bool = False, channels_last: bool = False, dist: Dist = Dist(), hflip: float = 0.5,
                 pad: int = 4) -> None:
        self.hflip, self.pad = hflip, pad
        if train:
            per_rank_batch(batch_size, dist)
        elif dist.distributed:
            share = torch.tensor(shard_indices(len(labels), dist), dtype=torch.int64)
            images, labels = images[share], labels[share]
        self.images, self.labels = images.to(device), labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.batch_size, self.device, self.generator, self.train = batch_size, device, generator, train
        self.channels_last, self.dist = channels_last, dist
        if train and generator is None:
            raise ValueError("a training TensorBatches needs a torch.Generator")

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.train else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else sl
            x, y = self.images[idx], self.labels[idx]
            if self.train:
                x, y = self._share(pad_crop_flip(x, self.generator, self.pad, self.hflip)[0], y)
            yield self._out((x.float() - self.mean) / self.std, y)


class LoaderBatches(Batches):
    """A DataLoader of already-transformed tensors (image folders), moved to the device as they come.

    Distributed training: a DistributedSampler seeded from `generator` (the same order on every rank, reshuffled
    each epoch), batch_size / N per rank, and a per-rank generator for the workers' augmentation seeds.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, device: torch.device, workers: int = 0,
                 generator: torch.Generator | None = None, train: bool = False, channels_last: bool = False,
                 dist: Dist = Dist()) -> None:
        self.device, self.channels_last, self.dist, self.sampler, self.epoch = device, channels_last, dist, None, 0
        self.generator = generator if train else None
        self.skipped: dict[str, str] = {}  # files that failed to decode in an epoch (a worker's included)

        if isinstance(dataset, ImageFiles):
            dataset = ReportingFiles(dataset)
        if train and dist.distributed:
            if generator is None:
                raise ValueError("distributed training from a DataLoader needs a torch.Generator (the shared order)")
            seed = int(torch.randint(2**62, (), generator=generator))  # equal on every rank
            self.sampler = torch.utils.data.DistributedSampler(dataset, dist.world_size, dist.rank, seed=seed)
            batch_size = per_rank_batch(batch_size, dist)
            generator = torch.Generator().manual_seed(rank_seed(seed, dist))  # workers' augmentation differs per rank
            self.generator = generator
        elif not train:
            dataset = eval_share(dataset, dist)
        n = len(self.sampler) if self.sampler is not None else len(dataset)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=train and self.sampler is None, sampler=self.sampler,
            drop_last=train and n >= batch_size, generator=generator if train else None, num_workers=workers,
            # training workers start afresh each epoch, seeded from `generator`: the augmentation is then a function
            # of the generator's state, which a resumed run restores (persistent workers would carry their own RNG)
            pin_memory=device.type == "cuda", persistent_workers=workers > 0 and not train,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        if self.sampler is not None:  # a new order each epoch, the same on every rank
            self.sampler.set_epoch(self.epoch)
            self.epoch += 1
        for x, y, *skips in self.loader:
            for line in (line for text in (skips[0] if skips else ()) for line in text.splitlines()):
                path, _, reason = line.partition("\t")
                if path not in self.skipped:
                    self.skipped[path] = reason
                    if self.dist.is_main:
                        warnings.warn(f"skipped {path}: {reason}", stacklevel=2)
            yield self._out(x.to(self.device, non_blocking=True), y)


def stratified_indices(labels: torch.Tensor, n_classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """(train, val) indices: per class, the same seeded choice `folders.stratified_split` makes for files."""
    train, val = stratified_split([(i, int(c)) for i, c in enumerate(labels.tolist())], n_classes, fraction, seed)
    return torch.tensor([i for i, _ in train], dtype=torch.int64), torch.tensor([i for i, _ in val], dtype=torch.int64)


