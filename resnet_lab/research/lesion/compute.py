"""The lesion measurement: delete blocks of a trained net at test time and score what is left.

What a deletion means, block by block (`blocks.BasicBlock` / `Bottleneck`):

- A residual block computes ``act(branch(x) + shortcut(x))``, where ``shortcut`` is the identity or, where the
  shapes change, `ShortcutA` (subsample + zero-pad) or a 1x1 projection. Deleting it removes the branch only: the
  block computes ``act(shortcut(x))``, with the block's own post-addition ReLU. So a block whose branch outputs
  exactly 0 (last BN with gamma = beta = 0) is unchanged by its deletion, bit for bit.
- A plain block (``residual=False``: the same convs and BNs, no shortcut) becomes the identity, which only exists
  where input and output shapes agree. A plain block that changes the stride or the width is *not removable*: its
  single-lesion accuracy is NaN and its row says ``removable=False``.

The lesioned net *is* the trained net: `lesioned()` swaps the deleted blocks' `forward` for the lesion's on the
same module objects and restores them on exit, so no weight is copied. While it is active the model computes the
lesioned function for every caller: give a lesion study its own model instance (as `weights.load_checkpoint`
returns), never one shared with other threads.

Every lesion is scored by the one evaluation loop (`scoring.score`) on one held-out set (`training.heldout`). The
random deletions draw `draws` deletion orders (random permutations of the removable blocks, from a seeded numpy
Generator, never the global RNG); k = 0..R deletes the first k blocks of each order, so each draw's curve deletes
nested sets, and each distinct set is evaluated only once (`lesion_sets`: also what a run costs).

Tidy columns (COLUMNS): one row per (model, kind, block or draw and k): ``kind`` is "single" (one block deleted:
block, stage, index, position, downsampling, removable; k = 1) or "random" (k random blocks deleted in draw
``draw``; ``deleted`` lists them, ";"-separated; k = 0 is the intact net).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...models.blocks import BasicBlock, Bottleneck
from ...models.resnet import REGISTRY, ResNet
from ...progress import Progress
from ...runtime.cost import arch_of
from ...runtime.scoring import chunks, score

if TYPE_CHECKING:
    from ...data.heldout import HeldOut

COLUMNS = ["model", "arch", "residual", "kind", "block", "stage", "index", "position", "downsampling", "removable",
           "k", "draw", "deleted", "accuracy", "n", "chance"]
# Per image, batches of 64 ran 1.9x faster than 256 here (ResNet-56 and -20, one thread: cache-sized activations),
# with the same logits bit for bit.
BATCH_SIZE = 64


@dataclass(frozen=True)
class BlockInfo:
    """One block of a ResNet (or plain twin) and what deleting it means."""

    name: str  # state-dict prefix, `layer2.0`
    stage: int  # 1-based
    index: int  # within the stage
    position: int  # depth order over all blocks, 0-based
    residual: bool
    downsampling: bool  # stride > 1 or a width change: the block's output shape differs from its input's

    @property
    def removable(self) -> bool:
        """A residual block always (its shortcut stays); a plain one only where the identity fits."""
        return self.residual or not self.downsampling


def shape_change(block: BasicBlock | Bottleneck) -> bool:
    """Whether the block's main path strides or changes the width (its projection shortcut's convs aside)."""
    shortcut = set(block.downsample.modules()) if getattr(block, "downsample", None) is not None else set()
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m not in shortcut]
    return any(s > 1 for c in convs for s in c.stride) or convs[0].in_channels != convs[-1].out_channels


def block_table(model: nn.Module) -> list[BlockInfo]:
    """Every block of `model` in depth order; a clear error for anything that is not one of our ResNets."""
    if not isinstance(model, ResNet):
        raise TypeError(f"lesion studies need one of resnet_lab's ResNets, not {type(model).__name__}")
    out = []
    for pos, (name, blk) in enumerate(model.blocks()):
        stage, index = name.split(".")
        out.append(BlockInfo(name, int(stage.removeprefix("layer")), int(index), pos, bool(blk.residual),
                             shape_change(blk)))
    return out


def lesion_forward(block: BasicBlock | Bottleneck) -> Callable[[torch.Tensor], torch.Tensor]:
    """What `block` computes once deleted: ``act(shortcut(x))`` if residual, the identity if plain and shapes allow."""
    if block.residual:
        act = block.act3 if isinstance(block, Bottleneck) else block.act2  # the post-addition ReLU
        shortcut = block.downsample
        if shortcut is None:
            return lambda x: act(x)
        return lambda x: act(shortcut(x))
    if shape_change(block):
        raise ValueError("a plain block that changes the stride or the width has no identity to become")
    return lambda x: x


@contextmanager
def lesioned(model: nn.Module, names: Iterable[str]) -> Iterator[nn.Module]:
    """`model` with the blocks `names` deleted, in place and sharing every weight; restored on exit, even on error.

    Not re-entrant for the same block and not thread-safe: the module objects themselves change while active.
    """
    blocks = dict(model.blocks()) if isinstance(model, ResNet) else {}
    if not blocks:
        block_table(model)  # raises the clear TypeError
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ValueError(f"no block {', '.join(unknown)}; the blocks are {', '.join(blocks)}")
    busy = [n for n in names if "forward" in vars(blocks[n])]
    if busy:
        raise RuntimeError(f"block {', '.join(busy)} is already lesioned (nested or concurrent lesions)")
    forwards = {n: lesion_forward(blocks[n]) for n in names}  # raises before anything changes
    try:
        for n, f in forwards.items():
            blocks[n].forward = f  # an instance attribute: nn.Module.__call__ finds it before the class's forward
        yield model
    finally:
        for n in forwards:
            vars(blocks[n]).pop("forward", None)


def lesion_accuracy(model: nn.Module, data: HeldOut, names: Iterable[str], batch_size: int = BATCH_SIZE) -> float:
    """Top-1 accuracy on `data` of `model` with the blocks `names` deleted (the one evaluation loop, eval mode)."""
    with lesioned(model, names):
        return score(model, chunks(data.x, data.y, batch_size)).accuracy


def deletion_orders(removable: Sequence[str], draws: int, seed: int) -> list[list[str]]:
    """`draws` random orders of the removable blocks, from a private numpy Generator (the global RNGs stay put)."""
    rng = np.random.default_rng(seed)
    return [[removable[i] for i in rng.permutation(len(removable))] for _ in range(draws)]


def k_values(n_removable: int, k_points: int | None = None) -> list[int]:
    """0..R, or about `k_points` of them evenly spaced (always 0, 1 and R): the live run's thinner curve."""
    if k_points is None or k_points >= n_removable + 1:
        return list(range(n_removable + 1))
    ks = np.unique(np.round(np.linspace(0, n_removable, max(2, k_points))).astype(int))
    return sorted(set(ks.tolist()) | ({1} if n_removable >= 1 else set()))


def lesion_sets(model: nn.Module, draws: int, seed: int, k_points: int | None = None) -> list[frozenset[str]]:
    """Every distinct set of blocks a study deletes (the intact net's empty set first): what it costs to run."""
    removable = [b.name for b in block_table(model) if b.removable]
    sets = [frozenset()] + [frozenset([b]) for b in removable]
    for order in deletion_orders(removable, draws, seed):
        sets += [frozenset(order[:k]) for k in k_values(len(removable), k_points)]
    return list(dict.fromkeys(sets))


def arch_name(model: nn.Module) -> str:
    """The registry name of `model`'s config (`resnet56`), else one made from its kind and depth."""
    arch = arch_of(model)
    return arch if arch in REGISTRY else f"{'resnet' if model.residual else 'plain'}{model.config.depth}"


def lesion_study(model: nn.Module, data: HeldOut, *, name: str | None = None, draws: int = 5, seed: int = 0,
                 k_points: int | None = None, batch_size: int = BATCH_SIZE,
                 progress: Progress | None = None) -> pd.DataFrame:
    """Single-block lesions and random k-block lesions of `model` on `data`, as a tidy frame (COLUMNS).

    Each distinct deleted set is evaluated once (k = 0 is the intact net; k = 1 of a draw is a single lesion).
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    info = block_table(model)
    arch = arch_name(model)
    name = name or arch
    sets = lesion_sets(model, draws, seed, k_points)
    scores: dict[frozenset[str], float] = {}
    for i, s in enumerate(sets):
        scores[s] = lesion_accuracy(model, data, sorted(s), batch_size)
        if progress is not None:
            progress((i + 1) / len(sets), f"{name}: {i + 1}/{len(sets)} lesions")
    base = {"model": name, "arch": arch, "residual": bool(model.residual), "n": data.n,
            "chance": 1.0 / model.num_classes}
    rows = []
    for b in info:
        rows.append({**base, "kind": "single", "block": b.name, "stage": b.stage, "index": b.index,
                     "position": b.position, "downsampling": b.downsampling, "removable": b.removable, "k": 1,
                     "draw": -1, "deleted": b.name if b.removable else "",
                     "accuracy": scores[frozenset([b.name])] if b.removable else math.nan})
    removable = [b.name for b in info if b.removable]
    for d, order in enumerate(deletion_orders(removable, draws, seed)):
        for k in k_values(len(removable), k_points):
            rows.append({**base, "kind": "random", "block": "", "stage": -1, "index": -1, "position": -1,
                         "downsampling": False, "removable": True, "k": k, "draw": d,
                         "deleted": ";".join(order[:k]), "accuracy": scores[frozenset(order[:k])]})
    return pd.DataFrame(rows, columns=COLUMNS)
