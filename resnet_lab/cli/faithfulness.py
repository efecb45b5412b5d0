"""`python -m resnet_lab faithfulness`: how faithful each explanation is on a Shapes checkpoint's held-out images
(`explain.faithfulness`), as two tables and an optional CSV."""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from ..data.heldout import TEST_SEED
from ..data.shapes import ShapesDataset
from ..explain.faithfulness import SCORE_COLUMNS, STEPS, measure_faithfulness
from ..explain.methods import METHODS
from ..models.weights import WeightsUnavailable, load_checkpoint
from ..runtime.scoring import chunks, score
from .args import names, positive_int, seed, writable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="assets/shapes_resnet20.safetensors", help="a checkpoint trained on Shapes")
    p.add_argument("--methods", type=names(METHODS, "methods"),
                   default="gradcam,guided_gradcam,integrated_gradients,occlusion")
    p.add_argument("--stages", default=None, help="comma-separated stages or blocks (default: every stage)")
    p.add_argument("--n", type=positive_int, default=500, help="images scored")
    p.add_argument("--n-random", type=positive_int, default=100, help="images for the randomization check")
    p.add_argument("--steps", type=positive_int, default=STEPS, help="deletion/insertion steps")
    p.add_argument("--data-seed", type=seed, default=None, help="Shapes seed (default: the checkpoint's test seed)")
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--seed", type=seed, default=0, help="random maps, tie-breaks and re-initialization")
    p.add_argument("--out", type=writable("file", makes_folders=False), default=None,
                   help="write the table as CSV here")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_checkpoint(args.model)
    except WeightsUnavailable as e:
        print(f"faithfulness: {e}", file=sys.stderr)
        return 2
    model, meta = loaded.model, loaded.meta
    known = [*model.stage_names, *(name for name, _ in model.blocks())]
    unknown = [s.strip() for s in (args.stages or "").split(",") if s.strip() and s.strip() not in known]
    if unknown:
        print(f"faithfulness: --stages: {', '.join(map(repr, unknown))} is not a stage or block of this net "
              f"(its stages: {', '.join(model.stage_names)}; blocks: {known[len(model.stage_names)]} ...)",
              file=sys.stderr)
        return 2
    data = meta.get("data", {})
    seed = args.data_seed if args.data_seed is not None else data.get("test_seed", TEST_SEED)
    dataset = ShapesDataset(args.n, seed, int(loaded.pretrained_cfg["input_size"][-1]), data.get("clutter", True))
    stages = args.stages.split(",") if args.stages else list(model.stage_names)
    accuracy = score(model, chunks(dataset.normalized(), dataset.labels, args.batch_size)).accuracy
    print(f"{args.model}: accuracy {accuracy:.4f} on {args.n} Shapes images (seed {seed})")
    bar = tqdm(total=1000, desc="faithfulness", bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def progress(fraction: float, desc: str) -> None:
        bar.set_description(desc)
        bar.update(round(fraction * 1000) - bar.n)

    df = measure_faithfulness(model, dataset, args.methods.split(","), stages, n=args.n, batch_size=args.batch_size,
                  progress=progress, steps=args.steps, n_random=args.n_random, seed=args.seed)
    bar.close()
    cascade_cols = [c for c in df.columns if c.startswith("rand_") and c != "rand_full"]
    for cols in (["method", "stage", *SCORE_COLUMNS, "rand_full"], ["method", "stage", *cascade_cols]):
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"), end="\n\n")
    if args.out:
        df.to_csv(args.out, index=False, float_format="%.4f")
        print(f"wrote {args.out}")
    return 0
