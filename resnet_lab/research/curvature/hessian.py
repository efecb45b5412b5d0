"""The full Hessian of a trained net's loss as a linear operator, and what the papers read off it.

Hessian-vector products by double backward (Pearlmutter's trick through autograd: the gradient of the mean loss with
`create_graph`, then the gradient of <gradient, v>), summed over fixed chunks of the images. That is the Hessian of
the mean loss exactly because BatchNorm runs in eval mode (running statistics), so no image's loss depends on
another's. It is taken with respect to every trainable parameter (convs, BN's gamma and beta, the classifier), as
PyHessian (Yao et al. 2020) does. Double backward replaced curvlinops' forward-over-reverse operator: the same
products (tested against it in float64), 1.04-1.3x faster on this project's nets on a CPU
(`benchmarks/bench_hvp.py`), and it lets a chunk's gradient graph be kept and reused: by every vector of a block
(Hutch++'s), and across Lanczos' sequential products as far as `cache_bytes` allows. The linear algebra is the
libraries', not ours:

- extreme eigenvalues: scipy's `eigsh` (ARPACK's implicitly restarted Lanczos);
- the smallest eigenvalue as Li et al. (2018, §6) compute it (`hess_vec_prod.min_max_hessian_eigs` in
  tomgoldstein/loss-landscape): `eigsh` on H - 0.51 lambda_max I, whose largest-magnitude eigenvalue is then the
  smallest of H (every lambda < 0.02 lambda_max lies farther from the shift than lambda_max does);
- the eigenvalue density by stochastic Lanczos quadrature: linear_operator's `lanczos_tridiag` (full
  reorthogonalization) from Gaussian start vectors, the tridiagonal matrix diagonalized by `torch.linalg.eigh`,
  smoothed with Gaussian bumps by curvlinops' `lanczos_approximate_spectrum_from_iter` (Papyan 2020,
  algorithm 2; Ghorbani et al. 2019);
- the trace by Hutch++ (Meyer et al. 2021): the exact trace of H on the span of H S (S Rademacher), where the few
  large eigenvalues live, plus Hutchinson's estimator on the rest; plain Hutchinson (`hutchinson_trace`) scatters
  several times more on these spectra, whose top eigenvalues dominate v'Hv.

Every random vector comes from a generator seeded here (numpy's for ARPACK's start vector, torch's for Lanczos and
the trace), never from the global RNGs: the same call gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

SHIFT = 0.51  # Li et al.'s shift, in units of lambda_max
MIN_EIGS = 3  # eigenvalues asked of the shifted solve (see `extreme_eigenvalues`)
DENSITY_POINTS = 512
DENSITY_KAPPA = 3.0  # Papyan's default width of the Gaussian bumps (in the spectrum rescaled to [-1, 1])
DENSITY_MARGIN = 0.05


def _saved_bytes(fn):  # noqa: ANN001, ANN202 - a private probe
    """fn()'s result and the bytes of the tensors autograd saved while running it (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@dataclass
class Hessian:
    """The Hessian of `model`'s mean cross-entropy on (x, y) at its current weights, counting its products.

    `cache_bytes`: memory the operator may spend keeping chunks' gradient graphs between products (0: rebuild each
    chunk's graph for every product or block of products). Measured on the first chunk, so the budget holds."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    chunk: int = 64
    cache_bytes: int = 0
    matvecs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.dim = int(sum(p.numel() for p in self.params))
        self.dtype = self.params[0].dtype
        self.n = len(self.y)
        self.starts = list(range(0, self.n, self.chunk))
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}
        self.graph_bytes = 0  # one full chunk's kept graph, measured at the first product

    def _gradient(self, i: int) -> tuple[torch.Tensor, ...]:
        """The gradient of chunk i's share of the mean loss, with its graph (for the second backward)."""
        if i in self.cache:
            return self.cache[i]
        s = self.starts[i]

        def grad() -> tuple[torch.Tensor, ...]:
            loss = F.cross_entropy(self.model(self.x[s:s + self.chunk]), self.y[s:s + self.chunk],
                                   reduction="sum") / self.n
            return torch.autograd.grad(loss, self.params, create_graph=True)

        if self.cache_bytes and not self.graph_bytes:
            g, self.graph_bytes = _saved_bytes(grad)
        else:
            g = grad()
        if self.cache_bytes and (len(self.cache) + 1) * self.graph_bytes <= self.cache_bytes:
            self.cache[i] = g
        return g

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v for a flat vector, or a [dim, k] block (each chunk's graph built once for the k columns)."""
        block = v if v.dim() == 2 else v[:, None]
        self.matvecs += block.shape[1]
        out = torch.zeros_like(block)
        cols = [list(c.split([p.numel() for p in self.params])) for c in block.T]
        with torch.enable_grad():
            for i in range(len(self.starts)):
                g = self._gradient(i)
                keep = i in self.cache
                for j, c in enumerate(cols):
                    hv = torch.autograd.grad(g, self.params, [t.view_as(p) for t, p in zip(c, self.params)],
                                             retain_graph=keep or j < len(cols) - 1, allow_unused=True)
                    out[:, j] += torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                            for h, p in zip(hv, self.params)])
        return out if v.dim() == 2 else out[:, 0]

    def scipy(self, shift: float = 0.0) -> LinearOperator:
        """H - shift * I as a scipy LinearOperator (numpy vectors in and out), counted like `@`."""
        device = self.params[0].device
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.ascontiguousarray(v, dtype=np_dtype).reshape(-1), device=device)
            out = (self @ t).detach().cpu().numpy()
            return out - shift * v.reshape(-1) if shift else out

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np_dtype)

    def start_vector(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(self.dim).astype(np.float64 if self.dtype == torch.float64 else np.float32)


def top_eigenvalues(h: Hessian, k: int = 1, tol: float = 1e-3, seed: int = 0) -> np.ndarray:
    """The `k` largest (algebraic) eigenvalues of H, largest first, to relative accuracy `tol`."""
    if not 1 <= k < h.dim:
        raise ValueError(f"k must be between 1 and {h.dim - 1}, not {k}")
    values = eigsh(h.scipy(), k=k, which="LA", tol=tol, v0=h.start_vector(seed), return_eigenvectors=False)
    return np.sort(values.astype(np.float64))[::-1]


def extreme_eigenvalues(h: Hessian, tol: float = 1e-2, seed: int = 0,
                        lambda_max: float | None = None) -> tuple[float, float]:
    """(lambda_max, lambda_min) of H as Li et al. compute them (see the module docstring), `tol` as theirs (1e-2).

    `lambda_max` skips the first solve when it is known (from `top_eigenvalues`). Their first solve takes the
    eigenvalue largest in magnitude; at a trained minimum that is lambda_max. Where both come out with the roles
    swapped (a maximum: lambda_max <= 0 < lambda_min) they are swapped back, as in their code.
    """
    if lambda_max is None:
        lambda_max = float(eigsh(h.scipy(), k=1, which="LM", tol=tol, v0=h.start_vector(seed),
                                 return_eigenvectors=False)[0])
    shift = SHIFT * lambda_max
    # Three eigenvalues, not Li et al.'s one: the shifted operator's wanted end sits just beyond the Hessian's huge
    # near-null cluster (at -shift), and a single Ritz value can converge onto that cluster first, reporting
    # lambda_min ~ 0 (a false "convex"); asking for three makes ARPACK resolve the end of the spectrum past it.
    lambda_min = float(min(eigsh(h.scipy(shift), k=MIN_EIGS, which="LM", tol=tol, v0=h.start_vector(seed + 1),
                                 return_eigenvectors=False))) + shift
    if lambda_max <= 0 < lambda_min:
        lambda_max, lambda_min = lambda_min, lambda_max
    return lambda_max, lambda_min


def curvature_ratio(lambda_max: float, lambda_min: float) -> float:
    """Li et al.'s |lambda_min / lambda_max|, with lambda_min >= 0 (locally convex) counted as 0."""
    if not (math.isfinite(lambda_max) and math.isfinite(lambda_min)) or lambda_max == 0:
        return math.nan
    return abs(min(lambda_min, 0.0) / lambda_max)


def hutchinson_trace(h: Hessian, samples: int = 50, seed: int = 0) -> np.ndarray:
    """`samples` unbiased estimates v'Hv of tr(H), one per Rademacher vector v (their mean is the estimate, their
    spread / sqrt(samples) its standard error)."""
    g = torch.Generator().manual_seed(seed)
    v = rademacher(h, samples, g)
    return (v * (h @ v)).sum(0).double().cpu().numpy()


def rademacher(h: Hessian, k: int, g: torch.Generator) -> torch.Tensor:
    """A [dim, k] block of random signs on the operator's device and dtype."""
    return (torch.randint(0, 2, (h.dim, k), generator=g, dtype=torch.int8) * 2 - 1).to(h.params[0].device, h.dtype)


def hutchpp_trace(h: Hessian, matvecs: int = 48, seed: int = 0) -> tuple[float, float]:
    """(estimate, standard error) of tr(H) by Hutch++ (Meyer et al. 2021, algorithm 1) with `matvecs` products:
    a third sketches the top of the spectrum (Q = orth(H S)), a third takes tr(Q'HQ) exactly, a third estimates the
    rest by Hutchinson on vectors projected off Q. The error is that last part's, from its per-vector spread."""
    k = matvecs // 3
    if k < 2:
        raise ValueError(f"Hutch++ needs at least 6 products (two per part), not {matvecs}")
    g = torch.Generator().manual_seed(seed)
    s, rest = rademacher(h, k, g), rademacher(h, k, g)
    q, _ = torch.linalg.qr(h @ s)
    top = float(torch.einsum("ij,ij->", q, h @ q))
    rest = rest - q @ (q.T @ rest)
    each = (rest * (h @ rest)).sum(0).double()
    return top + float(each.mean()), float(each.std() / math.sqrt(k))


def lanczos(h: Hessian, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ritz values, eigenvectors of the tridiagonal matrix) after `steps` Lanczos steps from a Gaussian start.

    The tridiagonal matrix is linear_operator's (`lanczos_tridiag`, full reorthogonalization); it is diagonalized
    here with `torch.linalg.eigh`, not with linear_operator's `lanczos_tridiag_to_diag`, which is written for
    positive definite kernels and replaces every negative Ritz value by 1 (a Hessian's negative curvature would
    vanish from the density).
    """
    from linear_operator.utils.lanczos import lanczos_tridiag

    device = h.params[0].device
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(h.dim, 1, generator=g, dtype=h.dtype).to(device)
    _, t = lanczos_tridiag(lambda v: h @ v, min(steps, h.dim), h.dtype, device, (h.dim, h.dim),
                           init_vecs=start)
    return torch.linalg.eigh(t.double().cpu())


def spectral_density(h: Hessian, steps: int = 80, runs: int = 1, seed: int = 0,
                     bounds: tuple[float, float] | None = None,
                     points: int = DENSITY_POINTS) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(grid of eigenvalues, density, Ritz values of each run): stochastic Lanczos quadrature averaged over `runs`.

    `bounds` (lambda_min, lambda_max) fixes the grid; by default it spans the Ritz values of all runs.
    """
    from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum_from_iter

    iters = [lanczos(h, steps, seed + r) for r in range(runs)]
    ritz = [e.detach().cpu().double().numpy() for e, _ in iters]
    if bounds is None:
        bounds = (min(r.min() for r in ritz), max(r.max() for r in ritz))
    density = None
    for evals, evecs in iters:
        grid, d = lanczos_approximate_spectrum_from_iter((evals.double().cpu(), evecs.double().cpu()), bounds,
                                                         points, DENSITY_KAPPA, DENSITY_MARGIN)
        density = d if density is None else density + d
    return grid.numpy(), (density / runs).numpy(), ritz
