"""The Playground: what the live view costs the training, and whether the default settings show degradation.

    python benchmarks/bench_playground.py [--steps 120] [--repeats 3] [--defaults]

Streaming overhead: the same run (the default pair, `--steps` steps) trained alone and trained while a second
thread does what the tab's generator does every `ui.playground.UPDATE_S` seconds: a snapshot, the views (the
five figures' Vega-Lite specs, the gradient maps as small PNGs inside them) and Gradio's postprocessing of them.
Alternated, `--repeats` times each, in one process; the median steps/s and their ratio are printed.

`--defaults`: one full run at `PlaygroundConfig()`'s defaults, printed as the tab would show it at the end (time,
each net's final trailing-mean training loss and held-out accuracy), to check that plain-56 is clearly behind
ResNet-56 within about two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gradio as gr  # noqa: E402

from resnet_lab.research import playground as pg  # noqa: E402
from resnet_lab.ui import playground as ui  # noqa: E402


def timed_run(cfg: pg.PlaygroundConfig, stream: bool) -> tuple[float, int]:
    """(steps per second of the training, views made meanwhile)."""
    watch = pg.LiveWatch(cfg.steps, cfg.ratio_every, time_limit_s=ui.TIME_LIMIT_S)
    thread = threading.Thread(target=pg.run_playground, args=(cfg, watch))
    plot = gr.Plot()
    made = 0
    t = time.perf_counter()
    thread.start()
    while thread.is_alive():
        thread.join(ui.UPDATE_S)
        if stream:
            status, loss, acc, plain_map, res_map, _, ratios, _ = ui.views(watch.snapshot())
            for figure in (loss, acc, plain_map, res_map, ratios):
                plot.postprocess(figure)
            made += 1
    return cfg.steps / (time.perf_counter() - t), made


def final_reading(watch: pg.LiveWatch, seconds: float) -> str:
    snap = watch.snapshot()
    df = snap.curves
    lines = [f"defaults {pg.PlaygroundConfig()} trained {snap.step} steps in {seconds:.0f} s"]
    for net, rows in df.groupby("net", sort=False):
        train = rows[rows.metric == "train_loss"].value.tail(max(1, snap.steps // 25)).mean()
        val = rows[rows.metric == "val_acc"].value.iloc[-1]
        lines.append(f"  {net}: training loss (trailing mean) {train:.3f}, held-out accuracy {val:.1%}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--defaults", action="store_true", help="also one full run at the defaults")
    args = p.parse_args()
    cfg = replace(pg.PlaygroundConfig(), steps=args.steps)
    print(f"{cfg.archs[0]} and {cfg.archs[1]}, {cfg.steps} steps of {cfg.batch_size} on {cfg.device}, "
          f"estimated {cfg.cost().seconds:.0f} s a run")
    rates: dict[str, list[float]] = {"alone": [], "streamed": []}
    views = []
    for _ in range(args.repeats):
        for mode in ("alone", "streamed"):
            rate, made = timed_run(cfg, mode == "streamed")
            rates[mode].append(rate)
            if made:
                views.append(made)
            print(f"  {mode}: {rate:.2f} steps/s" + (f" ({made} views)" if made else ""))
    alone, streamed = statistics.median(rates["alone"]), statistics.median(rates["streamed"])
    print(f"median steps/s: alone {alone:.2f}, streamed {streamed:.2f} ({statistics.median(views):.0f} views a run): "
          f"the live view costs {1 - streamed / alone:.1%} of the training speed")
    if args.defaults:
        t = time.perf_counter()
        watch = pg.run_playground(pg.PlaygroundConfig())
        print(final_reading(watch, time.perf_counter() - t))


if __name__ == "__main__":
    main()
