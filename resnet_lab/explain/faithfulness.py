"""How faithful is an explanation? Measured on Shapes, where the evidence is known pixel by pixel.

Four measures, each next to the score a random map gets, because a number
without its chance level says nothing:

- pointing game (Zhang et al. 2016): is the map's maximum inside the target's box?
  Also `mass_in_mask`: the share of the map's positive mass on the target's pixels.
- deletion / insertion AUC (Petsiuk et al. 2018, RISE): remove (insert) pixels in
  the map's order in `steps` equal steps and integrate the target's softmax
  probability over the fraction of pixels, x in [0, 1] (trapezoid). Deleted pixels
  take the dataset mean (0 after normalization); insertion starts from a heavily
  blurred copy of the image, as in RISE. Low deletion and high insertion AUC are good.
- model randomization (Adebayo et al. 2018): re-initialize the trained net
  cascading from the top (fc, the last block, ..., the stem) and give the mean
  Spearman rank correlation of each map with the trained net's map. A map that
  explains the model must decorrelate; one that stays put explains the image.

Maps explain the ground-truth label. Methods that take no layer (integrated
gradients, occlusion) are computed once and repeated on every stage's row,
with `uses_layer` False.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..data.shapes import ShapesDataset, normalize
from ..models.resnet import init_module
from ..progress import Progress
from ..runtime.devices import model_device
from .methods import METHODS, attribute

LAYERLESS = ("integrated_gradients", "occlusion")
SCORE_COLUMNS = ("pointing", "pointing_random", "mass_in_mask", "mass_in_mask_random", "deletion_auc",
                 "deletion_random", "insertion_auc", "insertion_random")
STEPS = 16
BLUR_SIGMA = 0.15  # of the image side: the target's shape is gone, its colour blob remains


# ----------------------------------------------------------------------------- pointing game


def _boxes(boxes: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """Is each map's maximum (the first one, on ties) inside its box (x0, y0, x1, y1, end exclusive)? [B] bool."""
    b, _, w = maps.shape
    idx = maps.reshape(b, -1).argmax(1).cpu()
    y, x = idx // w, idx % w
    x0, y0, x1, y1 = _boxes(boxes).unbind(1)
    return (x0 <= x) & (x < x1) & (y0 <= y) & (y < y1)


def random_maps(shape: Sequence[int], generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform noise maps: the chance level of every map-based measure; drawn on the generator's device."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device if generator is not None else device)


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass on the mask's pixels, [B] (0 for an all-zero map)."""
    pos = maps.clamp_min(0).flatten(1)
    total = pos.sum(1)
    inside = (pos * masks.flatten(1).to(pos)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


# ----------------------------------------------------------------------------- deletion / insertion


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a [B, C, H, W] batch (kernel of about 4 sigma, reflect padding)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    k = 2 * max(1, round(2 * sigma)) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def saliency_rank(maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each pixel's place in the map's descending order, [B, H*W]; ties are broken at random, not by position.

    Computed where the maps are; a `generator` must live on that device too.
    """
    flat = maps.flatten(1)
    shuffle = torch.rand(flat.shape, generator=generator, device=flat.device).argsort(1)  # random, then stable sort
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    places = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, places)


@torch.inference_mode()
def _probability(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return model(x).softmax(1).gather(1, target[:, None])[:, 0].cpu()


def perturbation_curves(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, rank: torch.Tensor, steps: int = STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion, insertion) target probabilities after each of `steps` steps, each [B, steps + 1].

    `x` is normalized, `rank` as from `saliency_rank`: step k touches the
    round(k / steps * H * W) pixels ranked first.
    """
    b, _, h, w = x.shape
    rank = rank.to(x.device).view(b, 1, h, w)
    blurred = blur(x, BLUR_SIGMA * min(h, w))
    deletion, insertion = [], []
    for k in range(steps + 1):
        chosen = rank < round(k / steps * h * w)
        deletion.append(_probability(model, torch.where(chosen, torch.zeros_like(x), x), target))
        insertion.append(_probability(model, torch.where(chosen, x, blurred), target))
    return torch.stack(deletion, 1), torch.stack(insertion, 1)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under each row, over x evenly spaced in [0, 1]: [B, K + 1] -> [B]."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


# ----------------------------------------------------------------------------- model randomization


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks of a [B, N] tensor, ties given their average rank (as Spearman needs)."""
    b, n = x.shape
    values, order = x.sort(1)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    group = (new.cumsum(1) - 1 + torch.arange(b, device=x.device)[:, None] * n).flatten()
    pos = torch.arange(n, dtype=torch.float64, device=x.device).repeat(b)
    mean_pos = torch.zeros(b * n, dtype=torch.float64, device=x.device).scatter_reduce(
        0, group, pos, "mean", include_self=False)
    return torch.empty(b, n, dtype=torch.float64, device=x.device).scatter_(1, order, mean_pos[group].view(b, n))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps, [B]; 0 where a map is constant (no order to compare)."""
    ra, rb = _ranks(a.flatten(1)), _ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den)).float()


def cascade(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The randomization order: fc, then every block from the last to the first, then the stem."""
    blocks = [(name, [blk]) for name, blk in reversed(model.blocks())]
    return [("fc", [model.fc]), *blocks, ("stem", [model.conv1, model.bn1])]


@torch.no_grad()
def reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh weights as at construction: He-normal convs, default Linear, BN reset to identity with fresh statistics."""
    for m in module.modules():
        init_module(m, generator)


def randomization_check(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, explain: Callable[[nn.Module], torch.Tensor],
    seed: int = 0, tick: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Mean Spearman correlation with the trained model's map after each cascade step (on a deep copy).

    `explain(model) -> maps` computes the maps of `x` for `target` on the model it is given;
    `tick()` is called after each step.
    """
    original = explain(model)
    net = copy.deepcopy(model).eval()
    g = torch.Generator(device=model_device(net)).manual_seed(seed)
    out = {}
    for name, modules in cascade(net):
        for m in modules:
            reinitialize(m, g)
        out[name] = float(spearman(original, explain(net)).mean())
        if tick is not None:
            tick()
    return out


# ----------------------------------------------------------------------------- the table


@dataclass
class _Batch:
    x: torch.Tensor  # normalized
    target: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def _batches(dataset: ShapesDataset, n: int, batch_size: int, device: torch.device) -> list[_Batch]:
    out = []
    for start in range(0, n, batch_size):
        samples = [dataset.sample(i) for i in range(start, min(n, start + batch_size))]
        out.append(_Batch(normalize(torch.stack([s.image for s in samples])).to(device),
                          torch.tensor([s.label for s in samples], device=device),
                          torch.tensor([s.box for s in samples]), torch.stack([s.mask for s in samples])))
    return out


def _scores(model: nn.Module, batches: list[_Batch], maps_of: Callable[[_Batch], torch.Tensor], steps: int,
            seed: int, tick: Callable[[], None]) -> dict[str, float]:
    """Pointing game, mass in mask, deletion and insertion AUC, averaged over all batches."""
    g = torch.Generator(device=model_device(model)).manual_seed(seed)  # tie-breaks, drawn where the maps are
    parts: dict[str, list[torch.Tensor]] = {"pointing": [], "mass_in_mask": [], "deletion_auc": [], "insertion_auc": []}
    for batch in batches:
        maps = maps_of(batch).to(g.device)
        deletion, insertion = perturbation_curves(model, batch.x, batch.target, saliency_rank(maps, g), steps)
        parts["pointing"].append(pointing_game(maps, batch.boxes).float())
        parts["mass_in_mask"].append(mass_in_mask(maps, batch.masks))
        parts["deletion_auc"].append(auc(deletion))
        parts["insertion_auc"].append(auc(insertion))
        tick()
    return {k: float(torch.cat(v).mean()) for k, v in parts.items()}


def _jobs(methods: Sequence[str], stages: Sequence[str]) -> list[tuple[str, str | None]]:
    """(method, stage) pairs `measure_faithfulness` computes: a layerless method once, with stage None."""
    return [(m, s) for m in methods for s in ([None] if m in LAYERLESS else stages)]


def planned_calls(model: nn.Module, methods: Sequence[str], stages: Sequence[str], n: int, n_random: int,
                  batch_size: int = 50) -> dict[str, list[int]]:
    """The batch size of every call each piece of `measure_faithfulness` makes: `curves` (deletion and insertion)
    and each method's maps.

    The curves run for the random maps and for every (method, stage) on the `n` images,
    in batches; each method's maps are made for those batches, then on the `n_random`
    images once for the trained net and once at every cascade step.
    """
    n_random = max(1, min(n_random, n))
    batches = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    jobs = _jobs(methods, stages)
    calls = {"curves": batches * (1 + len(jobs))}
    for method, _ in jobs:
        calls.setdefault(method, []).extend(batches + [n_random] * (len(cascade(model)) + 1))
    return calls


def estimate_seconds(
    model: nn.Module, dataset: ShapesDataset, methods: Sequence[str], stages: Sequence[str], n: int = 500,
    batch_size: int = 50, n_random: int = 100, steps: int = STEPS, probe: int = 4,
) -> float:
    """About how long `measure_faithfulness` with these settings will take, so a caller can say so before it starts.

    Each piece (the curves, each method's maps) is timed now on 1 and on `probe`
    images, after a warm-up call (first-call costs such as cuDNN's autotuning are paid
    once per run), each the faster of two tries (other work on a shared machine only
    slows a try down): a cost per call plus a cost per image, summed over `planned_calls`.
    The per-call part matters on a GPU, where a batch of 50 costs about what a batch
    of 4 does. A few seconds on a CPU for the Shapes net, a fraction of one on a GPU.
    """
    model.eval()
    device = model_device(model)
    n = min(n, len(dataset))
    k = max(2, min(probe, n, len(dataset)))
    batch = _batches(dataset, k, k, device)[0]
    rank = saliency_rank(random_maps(batch.masks.shape, torch.Generator(device=device).manual_seed(0)))
    pieces: dict[str, Callable[[int], torch.Tensor]] = {
        "curves": lambda b: perturbation_curves(model, batch.x[:b], batch.target[:b], rank[:b], steps)[0]}
    for method in dict.fromkeys(methods):
        pieces[method] = lambda b, m=method: attribute(model, batch.x[:b], batch.target[:b], m, stages[-1])

    def seconds(fn: Callable[[int], torch.Tensor], b: int) -> float:
        tries = []
        for _ in range(2):
            start = time.perf_counter()
            fn(b).sum().item()  # waits for the device
            tries.append(time.perf_counter() - start)
        return min(tries)

    total = 0.0
    for piece, sizes in planned_calls(model, methods, stages, n, n_random, batch_size).items():
        pieces[piece](1).sum().item()  # warm-up
        one, several = seconds(pieces[piece], 1), seconds(pieces[piece], k)
        per_image = max(several - one, 0.0) / (k - 1)
        per_call = max(one - per_image, 0.0)
        total += sum(per_call + per_image * size for size in sizes)
    return total


def _measure(column: str) -> str:
    """`deletion_random` -> `deletion_auc`, `pointing_random` -> `pointing`."""
    name = column.removesuffix("_random")
    return f"{name}_auc" if name in ("deletion", "insertion") else name


def measure_faithfulness(
    model: nn.Module,
    dataset: ShapesDataset,
    methods: Sequence[str],
    stages: Sequence[str],
    n: int = 500,
    batch_size: int = 50,
    progress: Progress | None = None,
    steps: int = STEPS,
    n_random: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (method, stage): each measure next to its random-map baseline, and the randomization cascade.

    Columns: method, label (display name), stage, uses_layer, n, then `SCORE_COLUMNS`
    (each measure and its `_random` chance level), `rand_full` (correlation once
    everything is re-initialized) and `rand_<step>` for every cascade step
    (`rand_fc`, `rand_layer3.2`, ..., `rand_stem`). `dataset` supplies images,
    labels, boxes and masks (its first `n` samples); the randomization check runs
    on the first `n_random` of them. `progress(fraction, desc)` is called as work
    completes (a Gradio progress bar fits).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    model.eval()
    device = model_device(model)
    n = min(n, len(dataset))
    batches = _batches(dataset, n, batch_size, device)
    n_random = max(1, min(n_random, n))
    rand_batch = _batches(dataset, n_random, n_random, device)[0]
    jobs = _jobs(methods, stages)
    total, done = len(batches) + len(jobs) * (len(batches) + len(cascade(model))), 0

    def tick(desc: str) -> Callable[[], None]:
        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done / total, desc)
        return step

    g = torch.Generator(device=device).manual_seed(seed)
    chance = _scores(model, batches, lambda b: random_maps(b.masks.shape, g), steps, seed, tick("random maps"))
    rows: dict[tuple[str, str | None], dict] = {}
    for method, stage in jobs:
        layer = stage or stages[-1]

        def explain(net: nn.Module, batch: _Batch, method: str = method, layer: str = layer) -> torch.Tensor:
            return attribute(net, batch.x, batch.target, method=method, layer=layer)

        desc = f"{METHODS[method]}" + (f" @ {stage}" if stage else "")
        scores = _scores(model, batches, lambda b: explain(model, b), steps, seed, tick(desc))
        cascade_corr = randomization_check(model, rand_batch.x, rand_batch.target,
                                           lambda net: explain(net, rand_batch), seed, tick(f"{desc}: randomization"))
        rows[method, stage] = {
            **{k: (chance if k.endswith("_random") else scores)[_measure(k)] for k in SCORE_COLUMNS},
            "rand_full": list(cascade_corr.values())[-1],
            **{f"rand_{k}": v for k, v in cascade_corr.items()},
        }
    records = []
    for method in methods:
        for stage in stages:
            row = rows[method, None if method in LAYERLESS else stage]
            records.append({"method": method, "label": METHODS[method], "stage": stage,
                            "uses_layer": method not in LAYERLESS, "n": n, **row})
    return pd.DataFrame.from_records(records)
