"""The degradation problem (He et al. 2015, Fig. 1 and 6): deeper plain nets train worse.

Plain-20, plain-56, ResNet-20 and ResNet-56 are trained in lockstep on the same
Shapes batches, from the same seed (so each ResNet starts from its plain twin's
weights), with the same SGD schedule. If plain-56 ends with a higher *training*
loss than plain-20, the deeper net is not overfitting: the solver fails to find
what the shallower net proves exists (copy plain-20, make the rest identity).

The budget is what a 2-core CPU trains in ~8 minutes: 1500 steps of 32 images,
about 5 epochs of 10k Shapes images without clutter (so that the shallow nets
learn within the budget). It is ~2% of He et al.'s 64k iterations, at a quarter
of their batch: plain-56 never leaves chance level while plain-20 reaches 98%,
and ResNet-56 learns (90%) where plain-56 cannot, but it still lags ResNet-20
(in He et al.'s full schedule the deeper ResNet ends ahead). The peak learning rate 0.02 at batch
32 is He et al.'s 0.1 at batch 128 scaled down, rounded; at 0.05, ResNet-56
(whose initial loss is ~3.3, see gradflow) collapsed to chance level in trials.

The shipped curves (`assets/degradation_curves.csv`) come from:

    python -m resnet_lab degradation --steps 1500 --batch-size 32 --out assets/degradation_curves.csv

Tidy columns: arch, variant, depth, step, metric, value, where metric is
train_loss / train_acc (per step, on the batch just seen, before the update),
their `_smooth` trailing means, and val_loss / val_acc (eval mode, held-out
images) at a few steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..paths import ASSETS
from ..progress import Progress, tqdm_progress
from ..resnet import REGISTRY, build, init_seed, twin_name
from ..shapes import CLASSES, ShapesDataset
from .tables import read_checked_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_ARCHS = ("plain20", "plain56", "resnet20", "resnet56")
SHIPPED_CSV = ASSETS / "degradation_curves.csv"
# The UI's re-run (~1-3 min on 2 cores): long enough for the first net to leave chance level, not for the final order.
QUICK = {"steps": 150, "batch_size": 32, "train_size": 4800, "val_size": 256, "evals": 3}
COLUMNS = ["arch", "variant", "depth", "step", "metric", "value"]


def _images(n: int, seed: int, size: int, clutter: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` normalized Shapes images and their labels."""
    ds = ShapesDataset(n, seed, size, clutter=clutter)
    return ds.normalized(), ds.labels


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup from lr/10, then cosine to 0: a fixed budget ends settled, so final losses compare nets."""
    if step < warmup:
        return lr * (0.1 + 0.9 * step / warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def loss_and_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """(loss, accuracy) in eval mode."""
    net.eval()
    logits = torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)])
    net.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def estimate_memory(steps: int, batch_size: int, archs: Sequence[str] = DEFAULT_ARCHS, *, train_size: int = 10_000,
                    val_size: int = 1000, image_size: int = 32, eval_batch: int = 256) -> int:
    """Estimated peak bytes `run_degradation` adds to the process (an upper bound, as `gradflow.estimate_memory`).

    Unlike a gradient sweep every net lives for the whole run: weights, gradients
    and SGD momentum of all of them, plus the normalized images (rendering holds
    ~3 float copies of a set for a moment), plus the hungrier of one training
    step (the largest net's saved activations) and one no-grad evaluation chunk.
    """
    from .memory import ALLOCATOR_OVERHEAD, BACKWARD_WORKSPACE, step_memory

    n_train = min(train_size, steps * batch_size)
    image = 3 * image_size * image_size * 4
    data = (n_train + val_size) * image
    rendering = 3 * max(n_train, val_size) * image
    weights, step, evaluation = 0, 0, 0
    for arch in archs:
        residual = REGISTRY[arch].residual
        name, variant = (arch, "residual") if residual else (twin_name(arch), "plain")
        params, saved, _, largest = step_memory(name, variant, batch_size, image_size)
        weights += 3 * params
        step = max(step, saved + BACKWARD_WORKSPACE * largest)
        _, _, _, largest_eval = step_memory(name, variant, max(2, min(eval_batch, val_size)), image_size)
        evaluation = max(evaluation, 3 * largest_eval)
    peak = max(rendering, data + weights + max(step, evaluation))
    return math.ceil(ALLOCATOR_OVERHEAD["cpu"] * peak)


def run_degradation(
    steps: int,
    batch_size: int,
    archs: Sequence[str] = DEFAULT_ARCHS,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    train_size: int = 10_000,
    val_size: int = 1000,
    evals: int = 5,
    image_size: int = 32,
    clutter: bool = False,
    until: int | None = None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Train `archs` in lockstep on identical batches; return the tidy curves.

    `progress(fraction, desc)` is called as training advances (the UI passes
    Gradio's progress, the CLI a tqdm bar). Validation runs at step 0 and at
    `evals` evenly spaced steps up to the last. `until` stops after that many
    steps of the `steps`-step schedule (no final validation): the start of a
    long run, exactly as the long run had it, for checking shipped curves.
    `device` runs the nets and holds the images there (a GPU Space trains on its
    GPU); the batch order is drawn on the CPU either way, so it is the same everywhere.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError("need steps >= 1 and batch_size >= 2 (train-mode BatchNorm)")
    if until is not None and not 1 <= until <= steps:
        raise ValueError(f"until must be within 1..steps ({steps}), not {until}")
    unknown = [a for a in archs if a not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown archs: {', '.join(unknown)}")
    report = progress or (lambda _f, _d: None)
    report(0.0, "rendering Shapes images")
    device = torch.device(device)
    x_train, y_train = _images(min(train_size, steps * batch_size), seed, image_size, clutter)
    x_val, y_val = _images(val_size, seed + 100_003, image_size, clutter)  # another seed: unseen images
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))

    nets: dict[str, nn.Module] = {}
    for arch in archs:  # one init seed for all: each ResNet starts from its plain twin's weights
        nets[arch] = build(arch, num_classes=num_classes, seed=init_seed(seed)).to(device).train()
    opts = {a: torch.optim.SGD(n.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
            for a, n in nets.items()}
    warmup = max(1, steps // 20)
    eval_steps = sorted({0, *np.linspace(0, steps, evals + 1).round().astype(int)[1:].tolist()})

    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    rows: list[tuple[str, str, int, int, str, float]] = []

    def record(arch: str, step: int, metric: str, value: float) -> None:
        cfg = REGISTRY[arch]
        rows.append((arch, "residual" if cfg.residual else "plain", cfg.depth, step, metric, value))

    def validate(step: int) -> None:
        for arch, net in nets.items():
            loss, acc = loss_and_accuracy(net, x_val, y_val)
            record(arch, step, "val_loss", loss)
            record(arch, step, "val_acc", acc)

    for step in range(steps if until is None else until):
        if step in eval_steps:
            report(step / steps, f"validating at step {step}")
            validate(step)
        if len(order) < batch_size:  # a fresh permutation per epoch, the same for every net
            order = torch.cat([order, torch.randperm(len(x_train), generator=g)])
        idx, order = order[:batch_size], order[batch_size:]
        xb, yb = x_train[idx.to(device)], y_train[idx.to(device)]
        for arch, net in nets.items():
            for group in opts[arch].param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            opts[arch].zero_grad(set_to_none=True)
            loss.backward()
            opts[arch].step()
            record(arch, step, "train_loss", loss.item())
            record(arch, step, "train_acc", (logits.argmax(1) == yb).float().mean().item())
        report((step + 1) / steps, f"step {step + 1}/{steps}")
    if until is None or until == steps:
        validate(steps)
    report(1.0, "done")
    return add_smoothing(pd.DataFrame(rows, columns=COLUMNS), window=max(1, steps // 25))


def add_smoothing(df: pd.DataFrame, window: int) -> pd.DataFrame:
    """Append `<metric>_smooth` rows: a trailing mean over `window` steps of each per-step training metric."""
    train = df[df.metric.isin(["train_loss", "train_acc"])].sort_values("step")
    smooth = train.copy()
    smooth["value"] = train.groupby(["arch", "metric"]).value.transform(
        lambda v: v.rolling(window, min_periods=1).mean())
    smooth["metric"] = smooth.metric + "_smooth"
    return pd.concat([df, smooth], ignore_index=True)


def final_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Per arch: the last smoothed training loss and accuracy and the last validation accuracy."""
    last = df.loc[df.groupby(["arch", "metric"]).step.idxmax()]
    table = last.pivot(index="arch", columns="metric", values="value")
    cols = ["train_loss_smooth", "train_acc_smooth", "val_loss", "val_acc"]
    order = list(dict.fromkeys(df.arch))
    return table.loc[order, cols].reset_index()


def describe_degradation(df: pd.DataFrame, title: str) -> str:
    """What the curves show (Markdown), read from their final smoothed training losses: each verdict (worse,
    better, about as well, stuck at chance) follows the measured ratio, so a run that does not show degradation
    says so. The app shows it beside the curves; the CLI prints it after the table."""
    final = final_metrics(df).set_index("arch")
    lines = [f"**{title}** (final smoothed training loss / validation accuracy):"]
    lines += [f"- {a}: {row.train_loss_smooth:.3f} / {row.val_acc:.1%}" for a, row in final.iterrows()]

    chance = math.log(len(CLASSES))

    def compare(ref: str, other: str, kind: str) -> str | None:
        if ref not in final.index or other not in final.index:
            return None
        r, o = final.loc[ref, "train_loss_smooth"], final.loc[other, "train_loss_smooth"]
        verdict = ("trains **worse** (higher training loss) than" if o > 1.05 * r else
                   "trains **better** than" if o < 0.95 * r else "trains about as well as")
        stuck = f", still at chance level (ln {len(CLASSES)} = {chance:.2f})" if abs(o - chance) < 0.03 else ""
        return f"{kind} {other} {verdict} {ref} ({o:.3f} vs {r:.3f}{stuck})."

    pairs = [("plain20", "plain56", "Plain:"), ("resnet20", "resnet56", "Residual:"),
             ("plain56", "resnet56", "Same depth:")]
    verdicts = [v for v in (compare(*pair) for pair in pairs) if v]
    return "\n".join(lines) + "\n\n" + " ".join(verdicts)


def read_csv(path: str | Path = SHIPPED_CSV) -> pd.DataFrame:
    return read_checked_csv(path, COLUMNS, "degradation")


STYLE = {20: "tab:green", 56: "tab:purple", 32: "tab:orange", 44: "tab:brown", 110: "tab:gray"}


def plot_curves(df: pd.DataFrame) -> Figure:
    """Smoothed training loss (left) and accuracy with validation points (right): plain dashed, ResNet solid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for arch in dict.fromkeys(df.arch):
        d = df[df.arch == arch]
        cfg = REGISTRY[arch]
        style = {"color": STYLE.get(cfg.depth, "black"), "ls": "-" if cfg.residual else "--"}
        loss, acc = (d[d.metric == m].sort_values("step") for m in ("train_loss_smooth", "train_acc_smooth"))
        val = d[d.metric == "val_acc"].sort_values("step")
        ax_loss.plot(loss.step, loss.value, label=arch, **style)
        ax_acc.plot(acc.step, acc.value, lw=1, label=f"{arch} train", **style)
        ax_acc.plot(val.step, val.value, marker="o", ms=4, lw=2, alpha=0.8, label=f"{arch} val", **style)
    ax_loss.set(xlabel="step", ylabel="training loss (smoothed)")
    ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncols=2 if ax is ax_acc else 1)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated archs, trained in lockstep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate (warmup, then cosine)")
    p.add_argument("--train-size", type=int, default=10_000, help="Shapes training images (cycled in epochs)")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--evals", type=int, default=5, help="validation points after step 0")
    p.add_argument("--clutter", action="store_true", help="Shapes with clutter (harder: needs a longer budget)")
    p.add_argument("--out", help="write the curves as CSV")
    p.add_argument("--plot", help="write the curves as PNG")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")


def run(args: argparse.Namespace) -> int:
    from .memory import available_memory, largest_fitting

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in REGISTRY]
    if unknown or args.steps < 1 or args.batch_size < 2:
        print(f"degradation: unknown archs {', '.join(unknown)}" if unknown else
              "degradation: need --steps >= 1 and --batch-size >= 2 (train-mode BatchNorm)", file=sys.stderr)
        return 2
    need = estimate_memory(args.steps, args.batch_size, archs, train_size=args.train_size, val_size=args.val_size)
    budget = available_memory(args.device)
    if need > budget:
        fits = largest_fitting(lambda b: estimate_memory(args.steps, b, archs, train_size=args.train_size,
                                                         val_size=args.val_size), 2, args.batch_size - 1, budget)
        hint = f"--batch-size {fits} fits" if fits else "fewer or shallower --archs, or a smaller --train-size"
        print(f"degradation: this run needs about {need / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB "
              f"free for it now; {hint}.", file=sys.stderr)
        return 2
    progress, close = tqdm_progress(args.steps, "degradation")
    try:
        df = run_degradation(args.steps, args.batch_size, archs, args.seed,
                             progress, lr=args.lr, train_size=args.train_size, val_size=args.val_size,
                             evals=args.evals, clutter=args.clutter, device=args.device)
    finally:
        close()
    print(final_metrics(df).round(4).to_string(index=False))
    print("\n" + describe_degradation(df, f"This run, {args.steps} steps"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False, float_format="%.6g")
        print(f"wrote {args.out}")
    if args.plot:
        plot_curves(df).savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0
