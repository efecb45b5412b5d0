"""`python -m resnet_lab landscape`: loss landscapes of trained twins, filter-normalized (`research.landscape`), as
tables, a CSV with its record, figures and the reading; or a re-reading of saved CSVs (--from-csv)."""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from ..progress import tqdm_progress
from ..research.landscape import estimate_cost, read_csv, summary_tables
from ..research.landscape.compute import CONTROLS, combine, compute_landscape, radius_points
from ..research.landscape.describe import describe_landscape
from ..research.landscape.directions import MIN_GRID, check_grid, grid_points
from ..research.landscape.plot import plot_1d, plot_2d, plot_sharpness
from ..research.study import Timer, fail, from_csv_record, load_models, run_record, save, session, split_list
from ..runtime import cost as C
from ..runtime.distributed import shard_indices
from ..runtime.memory import available_memory, refusal
from .args import SEED_MAX, int_in, names, number, numbers, positive_int, seed, shown_value, writable

MAX_GRID, MAX_SEEDS = 501, 1000  # the CLI's limits on what is listed before the memory check (points, seeds)


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

