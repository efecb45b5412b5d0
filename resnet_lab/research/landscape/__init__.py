"""Loss landscapes of trained nets along filter-normalized random directions (Li et al. 2018, §4), with controls.

    python -m resnet_lab landscape --models plain20,resnet20,plain56,resnet56 --dims 2 --grid 21 --span 1.0 \\
        --n 256 --seeds 5 --out assets --stem landscape_shapes                 # 2-D grids, five direction seeds
    python -m resnet_lab landscape --models ... --radii 0.05,0.1,0.2,0.5 --seeds 10 \\
        --controls none,temperature,bn,bn+temperature --out assets --stem landscape_shapes_sharpness
    torchrun --nproc-per-node 4 -m resnet_lab landscape --models ... --images 256 ...   # each rank its points

A bare arch name means the shipped twin (assets/twins/). `--images` is `--n`'s other name (torchrun's parser
refuses `--n` as an ambiguous abbreviation of its own options). `--from-csv` re-reads saved results and writes
the reading, JSON and figures again without computing anything. Tidy CSV columns: `compute.COLUMNS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd
import torch

from ...cli.args import SEED_MAX, int_in, names, number, numbers, positive_int, seed, shown_value, writable
from ...paths import ASSETS
from ...progress import tqdm_progress
from ...runtime import cost as C
from ...runtime.memory import available_memory, inference_memory, refusal
from ..study import Timer, fail, from_csv_record, load_models, run_record, save, session, split_list
from ..tables import read_checked_csv
from . import readings
from .compute import COLUMNS, CONTROLS, EVAL_BATCH, RADII, combine, compute_landscape, radius_points, read_landscape
from .describe import describe_landscape
from .directions import MIN_GRID, check_grid, grid_points, random_direction
from .plot import plot_1d, plot_2d, plot_sharpness

__all__ = ["COLUMNS", "CONTROLS", "RADII", "SHIPPED_CSV", "SHIPPED_SHARPNESS_CSV", "combine", "compute_landscape",
           "describe_landscape", "estimate_cost", "plot_1d", "plot_2d", "plot_sharpness", "quick_settings",
           "random_direction", "read_csv", "readings", "summary_tables"]

SHIPPED_CSV = ASSETS / "landscape_shapes.csv"
SHIPPED_SHARPNESS_CSV = ASSETS / "landscape_shapes_sharpness.csv"
MAX_GRID, MAX_SEEDS = 501, 1000  # the CLI's limits on what is listed before the memory check (points, seeds)
QUICK = {"grid": 15, "n": 256, "dims": 1, "span": 1.0}  # the app's live 1-D slice, cut by `quick_settings`


def read_csv(path: str = str(SHIPPED_CSV)) -> pd.DataFrame:
    """A landscape CSV, checked for its columns (older files without seeds or controls read as seed 0, none)."""
    return read_landscape(read_checked_csv(path, ["model", "alpha", "beta", "loss", "accuracy"], "landscape"))


def estimate_cost(archs: Sequence[str], points: int, n: int, seeds: int = 1, controls: Sequence[str] = ("none",),
                  bn_images: int = 0, device: str | torch.device = "cpu", size: int = 32) -> C.Cost:
    """Seconds and peak bytes of a run: per net, points x seeds forward passes over `n` images, plus `bn_images`
    more per point when BN is re-estimated (one cost model: `cost`, `memory`)."""
    per_point = n + (bn_images if any(c.startswith("bn") for c in controls) else 0)
    seconds = C.seconds([(a, points * seeds * per_point) for a in archs], "forward", device, size)
    return C.Cost(seconds, inference_memory(list(archs), n + bn_images, size, EVAL_BATCH, 3,
                                            device=str(torch.device(device))))


def quick_settings(archs: Sequence[str], seconds: float = 25.0, device: str | torch.device = "cpu") -> dict:
    """QUICK, with fewer held-out images (not under 64), then a coarser line (not under MIN_GRID), until the
    estimate for `archs` on `device` fits `seconds`; "seconds" is that estimate."""
    grid, n = QUICK["grid"], QUICK["n"]
    while estimate_cost(archs, grid, n, device=device).seconds > seconds and (n > 64 or grid > 7):
        if n > 64:
            n = max(64, int(n * 0.8))
        else:
            grid -= 2
    return {**QUICK, "grid": grid, "n": n, "seconds": round(estimate_cost(archs, grid, n, device=device).seconds, 1)}


def summary_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables the reading rests on (what the JSON and the app show): rises, pairs, the 2-D surface."""
    r = readings.rises(df)
    out = {"sharpness": readings.sharpness_table(r), "pairs": readings.pair_sharpness(r)}
    surf = readings.surface_readings(df)
    if len(surf):
        out |= {"surface": readings.surface_table(surf), "convexity_pairs": readings.pair_convexity(surf)}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated checkpoints (.safetensors with their JSON), or arch names of "
                                    "shipped twins")
    p.add_argument("--from-csv", default=None, help="instead of --models: re-read saved landscape CSVs "
                                                    "(comma-separated, concatenated) and write the reading again")
    p.add_argument("--grid", type=grid_option, default=21, help=f"points per axis (odd, at least {MIN_GRID})")
    p.add_argument("--span", type=number(0, lo_open=True), default=1.0,
                   help="the grid goes from -span to span along each direction")
    p.add_argument("--dims", type=int, default=1, choices=[1, 2], help="1: a line; 2: a plane (grid x grid)")
    p.add_argument("--radii", type=numbers(0, lo_open=True), default=None,
                   help="instead of a grid: only the points at +-r on a line, e.g. 0.05,0.1,0.2,0.5 (the sharpness "
                        "study)")
    p.add_argument("--n", "--images", dest="n", type=positive_int, default=1000, help="held-out images per point")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="test: images the checkpoint never saw (its test seed); train: its own training images")
    p.add_argument("--seed", type=seed, default=0, help="first direction seed")
    p.add_argument("--seeds", type=int_in(1, MAX_SEEDS), default=1,
                   help="direction seeds seed .. seed+N-1 (spread over directions)")
    p.add_argument("--controls", type=names(CONTROLS, "controls"), default="none",
                   help=f"comma-separated, from {', '.join(CONTROLS)}: bn re-estimates BatchNorm at every point, "
                        "temperature matches confidence")
    p.add_argument("--bn-images", type=positive_int, default=512, help="training images BatchNorm is re-estimated on")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present; a rank's own "
                                                  "GPU under torchrun)")
    p.add_argument("--out", type=writable("folder"), default=None, help="folder for <stem>.csv, .json and the figures")
    p.add_argument("--stem", default="landscape", help="file name stem in --out (e.g. landscape_shapes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def grid_option(text: str, zero: str = "") -> int:
    """--grid's type (and --map-grid's, where `zero` says what 0 means): `check_grid`, and at most MAX_GRID, since
    the points are listed before the memory check (a 2-D grid holds grid**2 of them)."""
    what = f"{'0 (' + zero + ') or ' if zero else ''}an odd integer from {MIN_GRID} to {MAX_GRID}"
    try:
        grid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} (got {shown_value(text)})") from None
    if zero and grid == 0:
        return 0
    if grid > MAX_GRID:
        raise argparse.ArgumentTypeError(f"must be {what} (got {grid})")
    try:
        check_grid(grid)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return grid


def check_arguments(args: argparse.Namespace) -> str | None:
    """What no single option's type can see: run right after parsing, before anything is loaded."""
    if args.from_csv:
        return None
    if not split_list(args.models):
        return "give --models (or --from-csv)"
    if "none" not in split_list(args.controls):
        return f"--controls takes none (always) and any of {', '.join(CONTROLS[1:])}, not {args.controls!r}"
    if args.seed + args.seeds - 1 > SEED_MAX:
        return f"--seed {args.seed} with --seeds {args.seeds} goes past the largest seed, {SEED_MAX}"
    return None


def _memory_refusal(models: list, points: int, seeds: int, args: argparse.Namespace,
                    device: torch.device) -> str | None:
    """None if the run's estimated peak fits what `device` can still allocate, else the sentence refusing it."""
    archs = [str(w.meta.get("arch") or C.arch_of(w.model)) for w in models]
    size = max(int(w.pretrained_cfg["input_size"][-1]) for w in models)
    controls = split_list(args.controls)
    bn = args.bn_images if any(c.startswith("bn") for c in controls) else 0
    need = estimate_cost(archs, points, args.n, seeds, controls, bn, device, size).bytes
    return refusal(need, available_memory(str(device)), "fewer --n images (or --bn-images) or shallower --models")


def report(df: pd.DataFrame, args: argparse.Namespace, record: dict) -> int:
    """Print the reading; with --out write the CSV, the JSON (record, tables, text) and the figures."""
    text = describe_landscape(df)
    print(text)
    if args.out:
        figures = {}
        if df.alpha.nunique() > 7 or df.beta.nunique() > 1:
            figures["_1d"] = plot_1d(df)
        if df.beta.nunique() > 1:
            figures["_2d"] = plot_2d(df)
        if df.seed.nunique() > 1 or df.control.nunique() > 1:
            figures["_sharpness"] = plot_sharpness(df)
        tables = {k: v.round(6).to_dict(orient="records") for k, v in summary_tables(df).items()}
        # a re-reading leaves its input CSVs as they are (they are the data; several stay several files)
        save(args, {} if args.from_csv else {"": df}, figures, record, text, tables)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.from_csv:
        try:
            df = combine([read_csv(p) for p in split_list(args.from_csv)])
        except (OSError, ValueError, pd.errors.ParserError) as e:
            return fail("landscape", f"--from-csv: {e}")
        return report(df, args, from_csv_record(args))
    try:
        models = load_models(split_list(args.models))
        radii = [float(r) for r in split_list(args.radii)] if args.radii else None
        points = radius_points(radii) if radii else grid_points(args.grid, args.span, args.dims)
    except ValueError as e:
        return fail("landscape", str(e))
    controls = split_list(args.controls)
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        with session(args.device) as dist:
            from ...runtime.distributed import shard_indices

            problem = _memory_refusal(models, len(points), len(seeds), args, dist.device)
            if problem:
                return fail("landscape", problem)

            mine = len(shard_indices(len(points) * len(seeds), dist))
            progress, close = (tqdm_progress(len(models) * mine, f"landscape rank {dist.rank}")
                               if not args.quiet and dist.is_main else (None, lambda: None))
            timer = Timer()
            try:
                df, controls_record = compute_landscape(models, points=points, n=args.n, seeds=seeds,
                                                        controls=controls, bn_images=args.bn_images,
                                                        split=args.split, device=dist.device, progress=progress,
                                                        dist=dist)
            finally:
                close()
            if not dist.is_main:
                return 0
            print(f"{len(models)} nets x {len(points)} points x {len(seeds)} seeds x {args.n} images in "
                  f"{timer.elapsed:.1f} s on {dist.world_size} x {dist.device}")
            record = run_record(args, timer.elapsed, dist, models=split_list(args.models), n=args.n,
                                split=args.split, seeds=seeds, points=len(points), radii=radii,
                                grid=None if radii else args.grid, span=args.span, dims=1 if radii else args.dims,
                                controls=controls, bn_images=args.bn_images, temperatures=controls_record)
            return report(df, args, record)
    except ValueError as e:
        return fail("landscape", str(e))
