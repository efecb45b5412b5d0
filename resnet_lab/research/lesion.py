"""Lesion studies (Veit et al. 2016, "Residual Networks Behave Like Ensembles of Relatively Shallow Networks").

Delete blocks of a *trained* net at test time and measure what is left: one
block at a time (their Fig. 3), and k random blocks at once (their Fig. 5).

What a deletion means, block by block (`blocks.BasicBlock` / `Bottleneck`):

- A residual block computes ``act(branch(x) + shortcut(x))``, where
  ``shortcut`` is the identity or, where the shapes change, `ShortcutA`
  (subsample + zero-pad) or a 1x1 projection. Deleting it removes the branch
  only: the block computes ``act(shortcut(x))``, with the block's own
  post-addition ReLU. So a block whose branch outputs exactly 0 (last BN with
  gamma = beta = 0) is unchanged by its deletion, bit for bit.
- A plain block (``residual=False``: the same convs and BNs, no shortcut)
  becomes the identity, which only exists where input and output shapes agree.
  A plain block that changes the stride or the width is *not removable*: its
  single-lesion accuracy is NaN and its row says ``removable=False``.

The lesioned net *is* the trained net: `lesioned()` swaps the deleted blocks'
`forward` for the lesion's on the same module objects and restores them on exit,
so no weight is copied. While it is active the model computes the lesioned
function for every caller: give a lesion study its own model instance (as
`weights.load_checkpoint` returns), never one shared with other threads.

Every lesion is scored on one held-out set, normalized once (`held_out_set`):
for a Shapes checkpoint the test set it was never trained on (its JSON's
`data.test_seed`, 999 as in train.py, and its clutter setting), at the model's
input size. The random deletions draw `draws` deletion orders (random
permutations of the removable blocks, from a seeded numpy Generator, never the
global RNG); k = 0..R deletes the first k blocks of each order, so each draw's
curve deletes nested sets, and each distinct set is evaluated only once.

The shipped results (`assets/lesion_shapes.csv`, `.png`) come from the four twins:

    OMP_NUM_THREADS=1 python -m resnet_lab lesion --n 2000 --draws 5 --k-points 14 --workers 4 --out assets --model \
        assets/twins/shapes_plain20.safetensors,assets/twins/shapes_resnet20.safetensors,\
assets/twins/shapes_plain56.safetensors,assets/twins/shapes_resnet56.safetensors

Tidy columns (COLUMNS): one row per (model, kind, block or draw and k):
``kind`` is "single" (one block deleted: block, stage, index, position,
downsampling, removable; k = 1) or "random" (k random blocks deleted in draw
``draw``; ``deleted`` lists them, ";"-separated; k = 0 is the intact net).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..blocks import BasicBlock, Bottleneck
from ..paths import ASSETS
from ..progress import Progress, tqdm_progress
from ..resnet import ResNet, twin_name
from .tables import read_checked_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..weights import LoadedWeights

SHIPPED_CSV = ASSETS / "lesion_shapes.csv"
SHIPPED_PNG = ASSETS / "lesion_shapes.png"
COLUMNS = ["model", "arch", "residual", "kind", "block", "stage", "index", "position", "downsampling", "removable",
           "k", "draw", "deleted", "accuracy", "n", "chance"]
# The most the app's live run does; `quick_settings` cuts n (then draws, k points) to fit its budget here and now.
QUICK = {"n": 400, "draws": 3, "k_points": 8}
# Per image, batches of 64 ran 1.9x faster than 256 here (ResNet-56 and -20, one thread: cache-sized activations),
# with the same logits bit for bit.
BATCH_SIZE = 64

# What "little", "~chance" and "smooth" mean when the text compares our numbers with Veit et al. (2016).
SMALL_DROP = 0.05  # a single non-downsampling deletion that costs at most 5 points costs "little" (their Fig. 3)
NEAR_CHANCE = 0.10  # within 10 points of chance counts as chance (plain nets, their Fig. 3 VGG)
WEAK = 0.6  # an intact accuracy below this is said to be a weakly trained net
EARLY = 0.25  # halfway to chance with under a quarter of the blocks deleted is "much sooner" than their Fig. 5
SMOOTH_STEP = 0.5  # "smooth": no single extra deletion accounts for more than half of the total fall (their Fig. 5)


# ----------------------------------------------------------------------------- blocks and their lesions


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


def _shape_change(block: BasicBlock | Bottleneck) -> bool:
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
                             _shape_change(blk)))
    return out


def _final_act(block: BasicBlock | Bottleneck) -> nn.Module:
    """The block's post-addition ReLU (`act2` of a BasicBlock, `act3` of a Bottleneck)."""
    return block.act3 if isinstance(block, Bottleneck) else block.act2


def lesion_forward(block: BasicBlock | Bottleneck) -> Callable[[torch.Tensor], torch.Tensor]:
    """What `block` computes once deleted: ``act(shortcut(x))`` if residual, the identity if plain and shapes allow."""
    if block.residual:
        act, shortcut = _final_act(block), block.downsample
        if shortcut is None:
            return lambda x: act(x)
        return lambda x: act(shortcut(x))
    if _shape_change(block):
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


# ----------------------------------------------------------------------------- data


@dataclass
class HeldOut:
    """A fixed, normalized evaluation set: made once, reused by every lesion (and by both twins)."""

    x: torch.Tensor  # float32 [n, 3, H, W], normalized with the model's mean/std
    y: torch.Tensor  # int64 [n]
    description: dict[str, Any]

    @property
    def n(self) -> int:
        return len(self.y)


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 normalized, element for element as `evaluation.evaluate` does it per batch."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - m) / s


def held_out_set(loaded: LoadedWeights, n: int, data_seed: int | None = None,
                 data_dir: str | None = None) -> HeldOut:
    """The test set the checkpoint never saw: Shapes (its JSON's test seed and clutter) or CIFAR's test split."""
    from ..training.datasets import load_cifar

    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    data = dict(loaded.meta.get("data") or {})
    name = data.get("name") or ("shapes" if loaded.model.num_classes == 8 else "cifar10"
                                if loaded.model.num_classes == 10 else None)
    cfg = loaded.pretrained_cfg
    if name == "shapes":
        from ..shapes import ShapesDataset

        seed = int(data.get("test_seed", 999)) if data_seed is None else data_seed
        size, clutter = int(cfg["input_size"][-1]), bool(data.get("clutter", True))
        ds = ShapesDataset(n, seed, size, clutter)
        images, labels = ds.images, ds.labels
        desc = {"name": "shapes", "n": n, "seed": seed, "size": size, "clutter": clutter}
    elif name in ("cifar10", "cifar100"):
        images, labels, _ = load_cifar(name, data_dir, train=False)
        images, labels = images[:n], labels[:n]
        desc = {"name": name, "split": "test", "n": len(labels)}
    else:
        raise ValueError(f"{loaded.source}: no held-out set for data {name!r}; lesion studies take Shapes or CIFAR "
                         "checkpoints (their JSON's `data` says which)")
    return HeldOut(normalize_images(images, cfg["mean"], cfg["std"]), labels, desc)


# ----------------------------------------------------------------------------- the study


@torch.inference_mode()
def accuracy(model: nn.Module, data: HeldOut, batch_size: int = BATCH_SIZE) -> float:
    """Top-1 accuracy of `model` (eval mode: BN uses its running statistics) on `data`, batched."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    try:
        for start in range(0, data.n, batch_size):
            logits = model(data.x[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == data.y[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / data.n


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
    info = block_table(model)
    removable = [b.name for b in info if b.removable]
    sets = [frozenset()] + [frozenset([b]) for b in removable]
    for order in deletion_orders(removable, draws, seed):
        sets += [frozenset(order[:k]) for k in k_values(len(removable), k_points)]
    return list(dict.fromkeys(sets))


def lesion_study(model: nn.Module, data: HeldOut, *, name: str | None = None, draws: int = 5, seed: int = 0,
                 k_points: int | None = None, batch_size: int = BATCH_SIZE,
                 progress: Progress | None = None) -> pd.DataFrame:
    """Single-block lesions and random k-block lesions of `model` on `data`, as a tidy frame (COLUMNS).

    Each distinct deleted set is evaluated once (k = 0 is the intact net; k = 1 of a draw is a single lesion).
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    info = block_table(model)
    arch = _arch(model)
    name = name or arch
    chance = 1.0 / model.num_classes
    sets = lesion_sets(model, draws, seed, k_points)
    scores: dict[frozenset[str], float] = {}
    for i, s in enumerate(sets):
        with lesioned(model, sorted(s)):
            scores[s] = accuracy(model, data, batch_size)
        if progress is not None:
            progress((i + 1) / len(sets), f"{name}: {i + 1}/{len(sets)} lesions")
    base = {"model": name, "arch": arch, "residual": bool(model.residual), "n": data.n, "chance": chance}
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


def _arch(model: nn.Module) -> str:
    """The registry name of `model`'s config (`resnet56`), from its blocks and depth."""
    from ..resnet import REGISTRY

    for arch, cfg in REGISTRY.items():
        if cfg == model.config:
            return arch
    return f"{'resnet' if model.residual else 'plain'}{model.config.depth}"


def estimate_seconds(model: nn.Module, n: int, draws: int, k_points: int | None = None, *,
                     seconds_per_image: float | None = None, data_size: int | None = None) -> float:
    """Seconds a `lesion_study` of `model` on `n` images will take here: forward passes x a measured per-image time.

    `seconds_per_image` defaults to one timed forward of a small batch on this machine now (warm), so the
    estimate follows the load of the moment.
    """
    passes = len(lesion_sets(model, draws, 0, k_points))
    if seconds_per_image is None:
        seconds_per_image = time_per_image(model, data_size)
    return passes * n * seconds_per_image


@torch.inference_mode()
def time_per_image(model: nn.Module, size: int | None = None, batch: int = 64) -> float:
    """Measured seconds per image of one eval-mode forward (warm-up first) on the model's device."""
    size = size or int(model.pretrained_cfg["input_size"][-1])
    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        model(x[:8])
        times = []
        for _ in range(3):  # the median of three: one forward on a shared CPU is a noisy clock
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
        return sorted(times)[1] / batch
    finally:
        model.train(was_training)


def quick_settings(model: nn.Module, budget_s: float = 25.0,
                   seconds_per_image: float | None = None) -> dict[str, float]:
    """The app's live settings: QUICK's draws and k points with `n` cut (down to 100) to fit `budget_s` here and now,
    then fewer draws and k points if even 100 images do not fit. Returns n, draws, k_points and estimate_s."""
    spi = time_per_image(model) if seconds_per_image is None else seconds_per_image
    for draws, k_points in ((QUICK["draws"], QUICK["k_points"]), (2, 5)):
        per_image = estimate_seconds(model, 1, draws, k_points, seconds_per_image=spi)
        n = int(max(100, min(QUICK["n"], budget_s / per_image // 50 * 50)))
        if n * per_image <= budget_s:
            break
    return {"n": n, "draws": draws, "k_points": k_points, "estimate_s": n * per_image}


def quick_study(loaded: LoadedWeights, budget_s: float = 25.0, progress: Progress | None = None,
                seed: int = 0) -> pd.DataFrame:
    """The app's live run: `quick_settings` for this model and machine, on its held-out set. `loaded.model` must be
    this run's own instance (see `lesioned`)."""
    settings = quick_settings(loaded.model, budget_s)
    data = held_out_set(loaded, int(settings["n"]))
    return lesion_study(loaded.model, data, draws=int(settings["draws"]), seed=seed, k_points=int(settings["k_points"]),
                        progress=progress)


# ----------------------------------------------------------------------------- results


def read_csv(path: str | Path = SHIPPED_CSV) -> pd.DataFrame:
    """A lesion CSV (as `lesion_study` makes and the CLI writes), checked for its columns."""
    df = read_checked_csv(path, COLUMNS, "lesion", keep_default_na=False, na_values={"accuracy": ["", "nan", "NaN"]})
    for col in ("residual", "downsampling", "removable"):
        df[col] = df[col].astype(str).str.lower().eq("true")
    df["block"] = df["block"].astype(str)
    df["deleted"] = df["deleted"].astype(str)
    return df


def k_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and k: mean, std, min and max accuracy over the random draws."""
    r = df[df.kind == "random"]
    g = r.groupby(["model", "k"], sort=False).accuracy
    return g.agg(["mean", "std", "min", "max"]).reset_index().fillna({"std": 0.0})


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _describe_model(d: pd.DataFrame) -> tuple[str, list[str], bool]:
    """(one paragraph about one model, how it departs from Veit et al., whether it learned) from its rows alone."""
    model, residual = d.model.iloc[0], bool(d.residual.iloc[0])
    chance = float(d.chance.iloc[0])
    curve = k_curve(d).sort_values("k")
    intact = float(curve[curve.k == 0]["mean"].iloc[0]) if (curve.k == 0).any() else math.nan
    single = d[(d.kind == "single")]
    removable = single[single.removable]
    kept = single[~single.removable]
    head = f"{model}: intact accuracy {_pts(intact)} % on {int(d.n.iloc[0])} held-out images (chance {_pts(chance)} %)."
    if intact <= chance + NEAR_CHANCE:
        return (f"{head} It is at chance before any deletion: it never learned, so its lesions measure nothing "
                "(the degradation problem, not a lesion result).", [], False)
    parts, departs = [head], []
    if intact < WEAK:
        parts.append("It learned little (the degradation problem), so its lesions start from a weak net.")
    drop = intact - removable.accuracy
    if residual:
        plain_blocks = removable[~removable.downsampling]
        down = removable[removable.downsampling]
        if len(plain_blocks):
            dp = intact - plain_blocks.accuracy
            worst = plain_blocks.loc[dp.idxmax(), "block"]
            parts.append(f"Deleting any single non-downsampling block costs at most {_pts(dp.max())} points "
                         f"({worst}; median {_pts(dp.median())}, {len(plain_blocks)} blocks).")
            if dp.max() > SMALL_DROP:
                cliff = plain_blocks[dp > SMALL_DROP].block.tolist()
                departs.append(f"in {model} deleting {', '.join(cliff[:4])}{' ...' if len(cliff) > 4 else ''} costs "
                               f"more than {_pts(SMALL_DROP)} points, where Veit et al. (Fig. 3) find every "
                               "non-downsampling block of ResNet-110 dispensable")
        if len(down):
            costliest = not len(plain_blocks) or (intact - down.accuracy).max() > dp.max()
            parts.append("Deleting downsampling block" + ("s " if len(down) > 1 else " ") + ", ".join(
                f"{b} costs {_pts(intact - a)}" for b, a in zip(down.block, down.accuracy)) + " points"
                + (" (the costliest deletion is a downsampling block's, as in Veit et al.)." if costliest else "."))
            if not costliest and dp.max() > SMALL_DROP:
                departs.append(f"in {model} the downsampling blocks are not the costliest to delete (at most "
                               f"{_pts((intact - down.accuracy).max())} against {_pts(dp.max())} points), where in "
                               "Veit et al. (Fig. 3) they stand out")
    else:
        if len(removable):
            near = removable.accuracy <= chance + NEAR_CHANCE
            if near.all():
                acc = removable.accuracy
                parts.append(f"Every removable single deletion drops it to ~chance "
                             f"(at most {_pts(acc.max())} %, median {_pts(acc.median())} %).")
            else:
                parts.append(f"Single deletions cost {_pts(drop.min())} to {_pts(drop.max())} points "
                             f"(median {_pts(drop.median())}); {int(near.sum())} of {len(removable)} send it to "
                             "~chance.")
                departs.append(f"in {model} {int((~near).sum())} of {len(removable)} single deletions leave it above "
                               f"chance + {_pts(NEAR_CHANCE)} points (at most {_pts(removable.accuracy.max())} %), "
                               "where Veit et al. find that deleting any layer of a plain (VGG) net sends it to chance")
        if len(kept):
            parts.append(f"{len(kept)} downsampling block{'s' if len(kept) > 1 else ''} "
                         f"({', '.join(kept.block)}) cannot be removed: no identity has its shape.")
    if len(curve) > 2:
        ks, mean = curve.k.to_numpy(), curve["mean"].to_numpy()
        top, fall = int(ks[-1]), intact - float(mean[-1])
        per_block = -np.diff(mean) / np.diff(ks)  # the fall per extra deleted block between evaluated k
        at_chance = ks[mean <= chance + NEAR_CHANCE]
        half = halfway_k(ks, mean, intact, chance)
        parts.append(f"With k random blocks deleted ({len(ks) - 1} values of k, "
                     f"{int(d[d.kind == 'random'].draw.nunique())} draws) the mean accuracy falls to "
                     f"{_pts(float(mean[-1]))} % at k = {top}"
                     + (f", halfway to chance at k = {half:.1f} ({_pts(half / top)} % of the blocks)"
                        if math.isfinite(half) and residual else "")
                     + (f", ~chance from k = {int(at_chance[0])}" if len(at_chance) else "")
                     + f"; the largest fall per extra deleted block is {_pts(per_block.max())} points.")
        if residual and fall > 0.1 and per_block.max() > SMOOTH_STEP * fall:
            departs.append(f"{model}'s accuracy falls off a cliff as blocks are deleted ({_pts(per_block.max())} "
                           f"of {_pts(fall)} points for one block), where Veit et al. (Fig. 5) see a smooth rise "
                           "in error")
        elif residual and math.isfinite(half) and half < EARLY * top:
            departs.append(f"{model} is halfway to chance after only {half:.1f} of its {top} blocks are deleted at "
                           f"random: it degrades smoothly but much sooner than Veit et al.'s ResNet-110 (Fig. 5, "
                           "54 blocks), whose error rises gradually over many deletions"
                           + (f"; {model} has fewer, hence individually more important, blocks" if top < 54 else ""))
    return " ".join(parts), departs, True


def halfway_k(ks: np.ndarray, mean: np.ndarray, intact: float, chance: float) -> float:
    """The (interpolated) k at which the mean accuracy has fallen halfway from `intact` to `chance`; nan if never."""
    target = (intact + chance) / 2
    below = np.nonzero(mean <= target)[0]
    if intact <= target or not len(below) or below[0] == 0:
        return math.nan
    i = below[0]
    k0, k1, a0, a1 = ks[i - 1], ks[i], mean[i - 1], mean[i]
    return float(k0 + (a0 - target) / (a0 - a1) * (k1 - k0))


def describe_lesion(df: pd.DataFrame) -> str:
    """What the numbers say, model by model, and whether they agree with Veit et al. (2016, Figs. 3 and 5)."""
    if df.empty:
        return "No lesion results."
    paragraphs, departs, tested = [], [], set()
    for model in dict.fromkeys(df.model):
        d = df[df.model == model]
        text, dep, learned = _describe_model(d)
        paragraphs.append(text)
        departs += dep
        if learned:
            tested.add(bool(d.residual.iloc[0]))
    claims = {True: "residual nets lose little when any one non-downsampling block goes and degrade smoothly as "
                    "more go", False: "a plain net does not survive losing a layer"}
    if departs:
        paragraphs.append("Where this disagrees with Veit et al. (2016):\n" + "\n".join(f"- {d}." for d in departs))
    elif tested:
        paragraphs.append("This agrees with Veit et al. (2016): " + "; ".join(claims[r] for r in (True, False)
                                                                            if r in tested) + ".")
    else:
        paragraphs.append("No model here learned, so nothing is compared with Veit et al. (2016).")
    return "\n\n".join(paragraphs)


_COLOURS = {True: ("tab:purple", "tab:blue", "tab:brown"), False: ("tab:green", "tab:orange", "tab:olive")}


def plot_lesion(df: pd.DataFrame) -> Figure:
    """Per twin pair, a row: single-block lesion accuracy per block (downsampling blocks marked) | accuracy vs k."""
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(df.model))
    groups: dict[str, list[str]] = {}
    for m in models:
        arch = df[df.model == m].arch.iloc[0]
        key = arch if arch.startswith("resnet") else twin_name(arch)
        groups.setdefault(key, []).append(m)
    fig = Figure(figsize=(12, 3.6 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    curves = k_curve(df)
    for (key, ms), (ax_s, ax_k) in zip(groups.items(), axes):
        seen = {True: 0, False: 0}
        for m in ms:
            d = df[df.model == m]
            residual = bool(d.residual.iloc[0])
            colour = _COLOURS[residual][seen[residual] % 3]  # ResNets purple, plain nets green (then others)
            seen[residual] += 1
            style = {"color": colour, "ls": "-" if residual else "--"}
            single = d[d.kind == "single"].sort_values("position")
            ax_s.plot(single.position, single.accuracy, marker="o", ms=3, label=m, **style)
            down = single[single.downsampling]
            ax_s.scatter(down.position, down.accuracy.fillna(0.0), marker="s", s=60, facecolors="none",
                         edgecolors=style["color"], zorder=3)
            for pos in single[~single.removable].position:
                ax_s.annotate("not removable", (pos, 0.02), rotation=90, fontsize=7, ha="center", va="bottom",
                              color=style["color"])
            c = curves[curves.model == m].sort_values("k")
            ax_k.plot(c.k, c["mean"], marker="o", ms=3, label=m, **style)
            ax_k.fill_between(c.k, (c["mean"] - c["std"]).clip(0, 1), (c["mean"] + c["std"]).clip(0, 1), alpha=0.2,
                              color=style["color"])
            intact = c[c.k == 0]["mean"]
            if len(intact):
                ax_s.axhline(float(intact.iloc[0]), lw=0.8, alpha=0.6, **style)
        chance = float(df[df.model.isin(ms)].chance.iloc[0])
        for ax in (ax_s, ax_k):
            ax.axhline(chance, color="black", lw=0.8, ls=":", label="chance")
            ax.set(ylim=(0, 1.02), ylabel="accuracy")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        names = df[df.model == ms[0]]
        names = names[names.kind == "single"].sort_values("position")
        ax_s.set_xticks(names.position, names.block, rotation=90, fontsize=7)
        ax_s.set_title(f"{key} twins: one block deleted (squares: downsampling blocks; lines: intact)", fontsize=9)
        ax_k.set(xlabel="blocks deleted at random (k)")
        ax_k.set_title("k random blocks deleted: mean ± std over draws", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a checkpoint (.safetensors with its JSON) or tag; several, comma-separated, share the images")
    p.add_argument("--from-csv", default=None,
                   help="instead of --model: describe and plot saved lesion CSVs (comma-separated, concatenated)")
    p.add_argument("--n", type=int, default=2000, help="held-out images")
    p.add_argument("--draws", type=int, default=5, help="random deletion orders per model")
    p.add_argument("--k-points", type=int, default=None, help="evaluate about this many values of k (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random deletion orders")
    p.add_argument("--data-seed", type=int, default=None,
                   help="Shapes: test-set seed (default: the checkpoint's test seed)")
    p.add_argument("--data-dir", default=None, help="CIFAR checkpoints: the folder holding the CIFAR test files")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--out", default=None, help="write lesion_<name>.csv and .png here")
    p.add_argument("--name", default="shapes", help="file name part: lesion_<name>.csv")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--workers", type=int, default=1,
                   help="models studied side by side in this many processes, one thread each (CPU)")


class _Failure(str):
    """A worker's message for the person (a str, so it crosses process boundaries as it is)."""


def _study_one(spec: str, opts: dict[str, Any], cache: dict | None = None,
               show_progress: bool = True) -> tuple[pd.DataFrame, str] | _Failure:
    """Load `spec`, make (or reuse from `cache`) its held-out set and run its study: (frame, timing line)."""
    from ..training.datasets import DatasetError
    from ..weights import WeightsUnavailable, load_weights

    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    try:
        loaded = load_weights(spec)
        block_table(loaded.model)
        cfg = loaded.pretrained_cfg
        key = (repr(loaded.meta.get("data")), tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]))
        cache = {} if cache is None else cache
        if key not in cache:  # twins trained on the same data share one rendered set
            cache[key] = held_out_set(loaded, opts["n"], opts["data_seed"], opts["data_dir"])
        data = cache[key]
    except (WeightsUnavailable, DatasetError, ValueError, TypeError) as e:
        return _Failure(f"{spec}: {e}")
    model = loaded.model.to(opts["device"])
    name = _arch(model)
    sets = len(lesion_sets(model, opts["draws"], opts["seed"], opts["k_points"]))
    progress, close = tqdm_progress(sets, f"lesion {name}") if show_progress else (None, lambda: None)
    t = time.perf_counter()
    try:
        df = lesion_study(model, data, name=name, draws=opts["draws"], seed=opts["seed"], k_points=opts["k_points"],
                          batch_size=opts["batch_size"], progress=progress)
    finally:
        close()
    return df, f"{name}: {sets} lesioned evaluations of {data.n} images in {time.perf_counter() - t:.1f} s"


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"lesion: {message}", file=sys.stderr)
        return 2

    if args.from_csv:
        try:
            frames = [read_csv(p.strip()) for p in args.from_csv.split(",") if p.strip()]
        except (OSError, ValueError, pd.errors.ParserError) as e:
            return fail(f"--from-csv: {e}")
        return _report(pd.concat(frames, ignore_index=True), args)
    specs = [s.strip() for s in (args.model or "").split(",") if s.strip()]
    if not specs:
        return fail("give --model (checkpoints to study) or --from-csv (saved results)")
    if args.n < 1 or args.draws < 1 or args.batch_size < 1 or args.workers < 1:
        return fail("--n, --draws, --batch-size and --workers must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail(f"device {args.device!r} asked for, but CUDA is not available here")
    missing = [s for s in specs if Path(s).suffix in (".safetensors", ".pth", ".pt", ".bin", ".th")
               and not Path(s).is_file()]
    if missing:
        return fail(f"checkpoint not found: {', '.join(missing)}")
    opts = {k: getattr(args, k) for k in ("n", "draws", "seed", "k_points", "data_seed", "data_dir", "batch_size",
                                          "device")}
    t = time.perf_counter()
    if args.workers > 1 and len(specs) > 1:  # one process per model, one thread each: the CPU's cores side by side
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(args.workers, len(specs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            results = list(ex.map(_study_one, specs, [{**opts, "threads": 1}] * len(specs),
                                  [None] * len(specs), [False] * len(specs)))
    else:
        cache: dict = {}
        results = []
        for spec in specs:
            results.append(_study_one(spec, opts, cache))
            if isinstance(results[-1], _Failure):
                break
    failures = [r for r in results if isinstance(r, _Failure)]
    if failures:
        return fail("; ".join(failures))
    frames = []
    for spec, (df, timing) in zip(specs, results):
        if any(f.model.iloc[0] == df.model.iloc[0] for f in frames):
            df = df.assign(model=f"{df.model.iloc[0]} ({Path(spec).stem})")
        frames.append(df)
        print(timing, file=sys.stderr)
    print(f"all {len(specs)} models in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return _report(pd.concat(frames, ignore_index=True), args)


def _report(df: pd.DataFrame, args: argparse.Namespace) -> int:
    print(describe_lesion(df))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        csv, png = out / f"lesion_{args.name}.csv", out / f"lesion_{args.name}.png"
        df.to_csv(csv, index=False, float_format="%.6g")
        plot_lesion(df).savefig(png, dpi=100)
        print(f"wrote {csv} and {png}")
    return 0
