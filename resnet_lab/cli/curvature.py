"""`python -m resnet_lab curvature`: the full Hessian of trained twins at a ladder of image-set sizes
(`research.curvature`), as a CSV with its record, the convergence and density figures and the reading; or a
re-reading of saved CSVs (--from-csv)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..progress import tqdm_progress
from ..research.curvature import CACHE_SHARE, Solvers, compute_curvature, estimate_cost, read_results
from ..research.curvature.compute import COLUMNS
from ..research.curvature.describe import density_summary, describe_curvature, map_table, spectrum_table
from ..research.curvature.plot import plot_convergence, plot_density, plot_map
from ..research.curvature.scale import default_density_n
from ..research.landscape.directions import MIN_GRID
from ..research.study import Timer, fail, from_csv_record, load_models, run_record, save, session, split_list
from ..runtime import cost as C
from ..runtime.memory import available_memory, refusal
from .args import int_in, ints, names, number, positive_int, seed, writable
from .landscape import grid_option

if TYPE_CHECKING:
    from ..models.weights import LoadedWeights

QUANTITIES = ("lambda_max", "lambda_min", "trace")  # `--quantities`; lambda_max is always measured
TOLERANCE = number(0, 1, lo_open=True, hi_open=True)  # ARPACK's relative tolerance (0 would mean machine precision)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated checkpoints, or arch names of shipped twins")
    p.add_argument("--from-csv", default=None, metavar="STEM", help="re-read STEM.csv, STEM_density.csv and "
                   "STEM_map.csv (comma-separated stems are concatenated) instead of computing")
    p.add_argument("--sizes", type=ints(2), default=(64, 256, 1024),
                   help="images per Hessian, one or more sizes n (comma-separated; the verdicts are read at the two "
                        "largest)")
    p.add_argument("--sets", type=int_in(0), default=3,
                   help="disjoint image sets at each size (0: no spectrum, only the map); set k at size n is images "
                        "k*n .. (k+1)*n - 1")
    p.add_argument("--quantities", type=names(QUANTITIES, "quantities"), default=",".join(QUANTITIES),
                   help="what to measure on each image set: lambda_max (always, with the top-k and the leave-one-out "
                        "on set 0), lambda_min (and the ratio), trace; leaving one out saves its products (a 56-layer "
                        "net at n = 1024 on a CPU)")
    p.add_argument("--first-set", type=int_in(0), default=0,
                   help="index of the first image set (more sets for an earlier run: --first-set 3 --sets 2 adds "
                        "sets 3 and 4, whose CSV reads together with the first run's)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="train: the checkpoint's own training images (the loss it minimized); test: held-out ones")
    p.add_argument("--top-k", type=positive_int, default=5, help="top eigenvalues (set 0)")
    p.add_argument("--tol", type=TOLERANCE, default=1e-3, help="relative tolerance of the top eigenvalues")
    p.add_argument("--min-tol", type=TOLERANCE, default=1e-2, help="tolerance of lambda_min (Li et al.'s 1e-2)")
    p.add_argument("--trace-matvecs", type=int_in(6), default=48,
                   help="Hessian-vector products of each Hutch++ trace (a third each: sketch, exact part, rest)")
    p.add_argument("--density-n", type=int_in(0), default=None,
                   help="images of the eigenvalue density (set 0; default: the size nearest 256; 0: none)")
    p.add_argument("--density-steps", type=int_in(0), default=80,
                   help="Lanczos steps of the density (0: none; else at least 2)")
    p.add_argument("--density-runs", type=positive_int, default=1, help="Lanczos runs averaged for the density")
    p.add_argument("--seed", type=seed, default=0, help="seed of the solvers' random vectors")
    p.add_argument("--map-grid", type=functools.partial(grid_option, zero="no map"), default=0,
                   help=f"points per axis of the ratio map (0: no map; else odd, at least {MIN_GRID})")
    p.add_argument("--map-span", type=number(0, lo_open=True), default=1.0,
                   help="the map spans -span .. span on each direction")
    p.add_argument("--map-n", type=int_in(2), default=None, help="images per map point (default 64)")
    p.add_argument("--map-tol", type=TOLERANCE, default=1e-2, help="eigensolver tolerance on the map (Li et al.'s)")
    p.add_argument("--direction-seed", type=seed, default=0,
                   help="the landscape's direction seed of the map's plane")
    p.add_argument("--chunk", type=positive_int, default=64, help="images per Hessian-vector product chunk (memory)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--out", type=writable("folder"), default=None)
    p.add_argument("--stem", default="curvature")
    p.add_argument("--quiet", action="store_true")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What no single option's type can see: run right after parsing, before anything is loaded."""
    if args.from_csv:
        return None
    if not split_list(args.models):
        return "give --models (or --from-csv)"
    if args.sets == 0 and not args.map_grid:
        return "nothing to compute: --sets 0 and no --map-grid"
    if args.density_steps == 1:
        return "--density-steps 1 gives no density (one Lanczos step has one Ritz value): use 0 or at least 2"
    if args.map_n is not None and not args.map_grid:
        return "--map-n sets the images of the map: add --map-grid (or leave --map-n out)"
    return None


def _solvers(args: argparse.Namespace, device: torch.device) -> Solvers:
    wanted = split_list(args.quantities)
    return Solvers(top_k=args.top_k, tol=args.tol, min_tol=args.min_tol, trace_matvecs=args.trace_matvecs,
                   lambda_min="lambda_min" in wanted, trace="trace" in wanted, seed=args.seed,
                   chunk=args.chunk, cache_bytes=int(CACHE_SHARE * available_memory(str(device))))


def _density_n(args: argparse.Namespace) -> int:
    return args.density_n if args.density_n is not None else default_density_n(args.sizes)


def _memory_refusal(models: Sequence[LoadedWeights], args: argparse.Namespace, device: torch.device) -> str | None:
    """None if the run's estimated peak fits what `device` can still allocate, else the sentence refusing it."""
    archs = [str(w.meta.get("arch") or C.arch_of(w.model)) for w in models]
    size = max(int(w.pretrained_cfg["input_size"][-1]) for w in models)
    need = estimate_cost(archs, args.sizes, args.sets, args.top_k, args.trace_matvecs, _density_n(args),
                         args.density_steps, args.density_runs, args.map_grid**2, args.map_n or 64, args.chunk,
                         device, size).bytes
    return refusal(need, available_memory(str(device)), "fewer --sizes or --sets, a smaller --chunk or fewer --models")


def report(spec: pd.DataFrame, dens: pd.DataFrame, maps: pd.DataFrame, args: argparse.Namespace,
           record: dict) -> int:
    text = describe_curvature(spec, maps if len(maps) else None, min_tol=getattr(args, "min_tol", 1e-2),
                              map_tol=getattr(args, "map_tol", 1e-2)) if len(spec) else ""
    if not len(spec) and len(maps):
        text = describe_curvature(pd.DataFrame(columns=COLUMNS), maps)
    print(text)
    if args.out:
        tables, figures, summary = {}, {}, {}
        if len(spec):
            tables[""] = spec
            figures["_convergence"] = plot_convergence(spec)
            summary["spectrum"] = spectrum_table(spec).to_dict(orient="records")
        if len(dens):
            tables["_density"] = dens
            figures["_density"] = plot_density(dens)
            summary["density"] = density_summary(dens).to_dict(orient="records")
        if len(maps):
            tables["_map"] = maps
            figures["_map"] = plot_map(maps)
            summary["map"] = map_table(maps).to_dict(orient="records")
        save(args, tables, figures, record, text, summary)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.from_csv:
        try:
            parts = [read_results(stem) for stem in split_list(args.from_csv)]
            # a spectrum-only run has no map file and a map-only run no spectrum: empty parts are left out, so the
            # columns keep their numeric types
            spec, dens, maps = (pd.concat([p[i] for p in parts if len(p[i])] or [parts[0][i]], ignore_index=True)
                                for i in range(3))
        except (OSError, ValueError, pd.errors.ParserError) as e:
            return fail("curvature", f"--from-csv: {e}")
        twice = spec[spec.duplicated(["model", "n", "images", "quantity", "index"])]
        if len(twice):  # a stem given twice, or --first-set repeating sets: each set would count twice in the tests
            r = twice.iloc[0]
            return fail("curvature", f"--from-csv: {r.model}'s {r.images} at n = {r.n} appears in more than one file "
                                     "(the same image set read twice)")
        return report(spec, dens, maps, args, from_csv_record(args))
    specs = split_list(args.models)
    try:
        models = load_models(specs)
        with session(args.device) as dist:
            problem = _memory_refusal(models, args, dist.device)
            if problem:
                return fail("curvature", problem)
            progress, close = (tqdm_progress(100, f"curvature rank {dist.rank}") if not args.quiet and dist.is_main
                               else (None, lambda: None))
            timer = Timer()
            try:
                spec, dens, maps = compute_curvature(
                    models, sizes=args.sizes, sets=args.sets, first_set=args.first_set, split=args.split,
                    solvers=_solvers(args, dist.device), density_n=_density_n(args),
                    density_steps=args.density_steps, density_runs=args.density_runs, map_grid=args.map_grid,
                    map_span=args.map_span, map_n=args.map_n or 64, map_tol=args.map_tol,
                    direction_seed=args.direction_seed, device=dist.device, progress=progress, dist=dist)
            finally:
                close()
            if not dist.is_main:
                return 0
            record = run_record(args, timer.elapsed, dist, models=specs, **{k: getattr(args, k) for k in (
                "sizes", "sets", "first_set", "quantities", "split", "top_k", "tol", "min_tol", "trace_matvecs",
                "density_steps",
                "density_runs", "seed", "map_grid", "map_span", "map_n", "map_tol", "direction_seed", "chunk")},
                density_n=_density_n(args))
            return report(spec, dens, maps, args, record)
    except ValueError as e:
        return fail("curvature", str(e))
