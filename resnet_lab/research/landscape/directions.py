"""Filter-normalized random directions (Li et al. 2018, eq. 1) and moving a net's weights along them in place.

Each direction d is Gaussian and then *filter-normalized*: every filter (output-channel slice of a conv or linear
weight) of d gets the norm of the same filter of the weights w0, so a step of 1 moves every filter as far as it is
long, and nets of different scale compare. As their code does with `--xignore biasbn`
(tomgoldstein/loss-landscape, `net_plotter.normalize_directions_for_weights`), 1-D tensors (biases, BN gamma/beta)
get no direction. Directions come from private generators seeded by (seed, direction index, parameter name)
through `zlib.crc32`, never from torch's global RNG, so a net and its twin (plain20/resnet20 share every parameter
name) draw the same Gaussian tensor for every parameter they share: only the per-filter rescaling to each net's own
weights differs, as it must. The landscape, the sharpness study and the curvature map all use these, so the
curvature map lies on the plane the contours are drawn on.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

Direction = dict[str, torch.Tensor]
MIN_GRID = 5  # the fewest points per axis a grid may have (see `check_grid`)


def perturbed_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a direction moves: every weight with filters (dim > 1); biases and BN stay put."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1]


def _generator(seed: int, index: int, name: str) -> torch.Generator:
    """A CPU generator for one (seed, direction, parameter name): the same tensor in every net that has the name."""
    return torch.Generator().manual_seed(zlib.crc32(f"{int(seed)}/{int(index)}/{name}".encode()))


def raw_direction(model: nn.Module, seed: int, index: int = 0) -> Direction:
    """Unnormalized Gaussian direction number `index`: one float32 CPU tensor per perturbed parameter."""
    return {name: torch.randn(p.shape, generator=_generator(seed, index, name), dtype=torch.float32)
            for name, p in perturbed_parameters(model)}


def filter_normalize(direction: Direction, model: nn.Module) -> Direction:
    """Scale each filter d[i] of `direction` to ||w[i]||, w the model's weight of that name (Li et al. eq. 1).

    As `net_plotter.normalize_direction` with `norm='filter'`, with a filter of zero norm (a dead filter)
    getting a zero direction rather than a division by zero. Returns new tensors on the weights' device.
    """
    weights = dict(model.named_parameters())
    out = {}
    for name, d in direction.items():
        w = weights[name].detach()
        d = d.to(device=w.device, dtype=w.dtype)
        dn = d.flatten(1).norm(dim=1)
        wn = w.flatten(1).norm(dim=1)
        scale = torch.where(dn > 0, wn / dn.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(wn))
        out[name] = d * scale.view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(model: nn.Module, seed: int, index: int = 0) -> Direction:
    """Filter-normalized random direction `index` for `model` (see the module docstring)."""
    return filter_normalize(raw_direction(model, seed, index), model)


def check_grid(grid: int) -> None:
    """ValueError unless `grid` is odd and at least MIN_GRID: the centre (the trained weights) must be a point,
    the rise is read at half the span (a grid of 3 has no point there: its step is 0 and every rise 0), and the
    curvature stencil needs interior points with neighbours on both sides."""
    if grid < MIN_GRID or grid % 2 == 0:
        raise ValueError(f"the grid must be odd and at least {MIN_GRID} points per axis, not {grid}: alpha = 0 must be "
                         "a point, the rise is read at half the span (a grid of 3 has no point there, so every rise "
                         "would be 0), and the curvature needs interior points with neighbours on both sides")


def grid_axis(grid: int, span: float) -> np.ndarray:
    """`grid` values from -span to span, symmetric, with 0 exactly in the middle when `grid` is odd."""
    if grid < 2:
        raise ValueError(f"grid must be at least 2 points, not {grid}")
    half = (grid - 1) / 2
    return span * (np.arange(grid) - half) / half


def grid_points(grid: int, span: float, dims: int) -> list[tuple[float, float]]:
    """(alpha, beta) of every point: a line (beta 0) for dims 1, alpha-major for dims 2."""
    axis = grid_axis(grid, span)
    if dims == 1:
        return [(float(a), 0.0) for a in axis]
    if dims == 2:
        return [(float(a), float(b)) for a in axis for b in axis]
    raise ValueError(f"dims must be 1 or 2, not {dims}")


class Mover:
    """Puts `model`'s perturbed weights at w0 + a*d1 + b*d2 in place; `restore()` puts w0 back bit for bit."""

    def __init__(self, model: nn.Module, d1: Direction, d2: Direction | None = None) -> None:
        self.params = dict(model.named_parameters())
        self.d1, self.d2 = d1, d2
        self.w0 = {k: self.params[k].detach().clone() for k in d1}

    @torch.no_grad()
    def move(self, a: float, b: float = 0.0) -> None:
        for k, w0 in self.w0.items():
            p = self.params[k]
            torch.add(w0, self.d1[k], alpha=a, out=p.data)
            if self.d2 is not None and b != 0:
                p.data.add_(self.d2[k], alpha=b)

    @torch.no_grad()
    def restore(self) -> None:
        for k, w0 in self.w0.items():
            self.params[k].data.copy_(w0)


@contextmanager
def moving(model: nn.Module, d1: Direction, d2: Direction | None = None) -> Iterator[Mover]:
    """A `Mover` for `model` whose weights are back at w0 on exit, also on error."""
    mover = Mover(model, d1, d2)
    try:
        yield mover
    finally:
        mover.restore()
