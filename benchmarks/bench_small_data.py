"""Real small image sets: the `train` command's default recipe against classical baselines on the same split.

    python benchmarks/bench_small_data.py [--sets digits] [--seeds 0 1 2] [--csv small_data.csv]

For each set and seed: one stratified 70/30 split (scikit-learn's `train_test_split`, `random_state=seed`), shared
by every method.

- Classical, on the raw pixel features: `SVC(gamma=0.001)` (scikit-learn's digits example), an SVC whose C and
  gamma are chosen by 5-fold cross-validation on the training part only, and a logistic regression. Accuracy from
  `predict`; ECE from probabilities (the SVCs': Platt scaling of the same SVC, `CalibratedClassifierCV` on the
  training part).
- Ours, as a user would: the training part written as an image folder (`<class>/<n>.png` at `SIZE` px), then
  `python -m resnet_lab train --arch resnet20 --data folder:TRAIN --size 32 --seed S` with the default recipe
  (the only other option is the set's `hflip`: 0 for digits, which a mirror changes, as the README says for
  digits and text) and `python -m resnet_lab evaluate` on the test part, written the same way. Seconds: the
  whole train command, start-up included. The CSV also keeps the recipe's resolved batch, steps, kept weights and
  epoch, and the fitted temperature (`--calibrate`, on by default for a small folder).

ECE is `metrics.EvaluationResult`'s (15 equal bins), for every method. The sets are those this machine can reach
without the network: scikit-learn's 8x8 handwritten digits (1,797 scans) ship inside its wheel. Its other image sets
(Olivetti faces, LFW) are downloaded at first use, so they are not here. Needs scikit-learn (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from resnet_lab.training.metrics import EvaluationResult  # noqa: E402

SIZE = 32  # the side the sets are written at
TEST_SHARE = 0.3


@dataclass(frozen=True)
class SmallSet:
    """A labelled image set: uint8 images [N, H, W], labels [N], features for the classical methods [N, D]."""

    images: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    hflip: float  # the `--hflip` that suits the images (0: a mirror changes them)


def digits() -> SmallSet:
    """scikit-learn's handwritten digits: 1,797 real 8x8 scans with 17 grey levels (0..16), 10 classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return SmallSet((d.images * 255 / 16).round().astype(np.uint8), d.target, d.data, hflip=0.0)


SETS: dict[str, Callable[[], SmallSet]] = {"digits": digits}


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: stratified, `TEST_SHARE` held out, the same for every method."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    return train_test_split(idx, test_size=TEST_SHARE, stratify=labels, random_state=seed)


def ece_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """The project's ECE of class probabilities."""
    logits = torch.from_numpy(np.log(np.clip(proba, 1e-12, 1.0)))
    return EvaluationResult([str(c) for c in range(proba.shape[1])]).update(logits, torch.from_numpy(labels)).ece


@dataclass(frozen=True)
class Fitted:
    predict: Callable[[np.ndarray], np.ndarray]
    predict_proba: Callable[[np.ndarray], np.ndarray]


def classical(s: SmallSet, tr: np.ndarray, te: np.ndarray, seed: int) -> list[dict]:
    """The baselines' rows: accuracy, ECE and seconds (fit and predict) on the test part."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import SVC

    def svc(**params: float) -> Callable[[np.ndarray, np.ndarray], Fitted]:
        """An SVC's labels (its own `predict`) beside Platt-scaled probabilities of the same SVC for the ECE
        (`CalibratedClassifierCV`, 5-fold on the training part: scikit-learn's replacement for `probability=True`)."""

        def fit(x: np.ndarray, y: np.ndarray) -> Fitted:
            labels = SVC(**params).fit(x, y)
            proba = CalibratedClassifierCV(SVC(**params), ensemble=False).fit(x, y)
            return Fitted(labels.predict, proba.predict_proba)

        return fit

    def tuned_svc(x: np.ndarray, y: np.ndarray) -> Fitted:
        """C and gamma by 5-fold CV on the training part (accuracy), then refitted there."""
        grid = {"C": [1, 10, 100], "gamma": [1e-4, 3e-4, 1e-3, 3e-3]}
        search = GridSearchCV(SVC(), grid, cv=StratifiedKFold(5, shuffle=True, random_state=seed)).fit(x, y)
        return svc(**search.best_params_)(x, y)

    def logistic(x: np.ndarray, y: np.ndarray) -> Fitted:
        model = make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
        return Fitted(model.predict, model.predict_proba)

    methods = {"SVC(gamma=0.001)": svc(gamma=0.001), "SVC, C and gamma by 5-fold CV on train": tuned_svc,
               "logistic regression": logistic}
    rows = []
    for name, fit in methods.items():
        t0 = time.perf_counter()
        model = fit(s.features[tr], s.labels[tr])
        pred, proba = model.predict(s.features[te]), model.predict_proba(s.features[te])
        rows.append({"method": name, "acc": float((pred == s.labels[te]).mean()),
                     "ece": ece_of(proba, s.labels[te]), "seconds": time.perf_counter() - t0})
    return rows


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """`root/<class>/<n>.png`, each image resized to `SIZE` px (bilinear), as a user's folder would hold them."""
    for n, (img, y) in enumerate(zip(images, labels)):
        (root / str(int(y))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR).save(root / str(int(y)) / f"{n:05d}.png")
    return root


def resnet_lab(*args: str) -> None:
    """`python -m resnet_lab ARGS` in a fresh process, as typed; its output shown only if it fails."""
    done = subprocess.run([sys.executable, "-m", "resnet_lab", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"resnet_lab {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def resnet_lab_here(*args: str) -> None:
    """The same command through `resnet_lab.__main__.main` in this process: the same parsing and command code
    without a fresh interpreter's start-up (the test's way; the benchmark's seconds include the start-up)."""
    from resnet_lab.__main__ import main as resnet_lab_main

    if (code := resnet_lab_main(list(args))) != 0:
        raise RuntimeError(f"resnet_lab {' '.join(args)} exited with {code}")


def ours(s: SmallSet, tr: np.ndarray, te: np.ndarray, seed: int, tmp: Path, extra: list[str],
         command: Callable[..., None] = resnet_lab) -> dict:
    """The default recipe through the real `train` and `evaluate` commands (`command` runs each)."""
    train_dir = write_folder(tmp / f"seed{seed}" / "train", s.images[tr], s.labels[tr])
    test_dir = write_folder(tmp / f"seed{seed}" / "test", s.images[te], s.labels[te])
    out = tmp / f"seed{seed}" / "run"
    train = ["train", "--arch", "resnet20", "--data", f"folder:{train_dir}", "--size", str(SIZE),
             "--hflip", str(s.hflip), "--seed", str(seed), "--workers", "0", "--quiet", "--out", str(out), *extra]
    t0 = time.perf_counter()
    command(*train)
    seconds = time.perf_counter() - t0
    command("evaluate", "--model", str(out.with_suffix(".safetensors")), "--data", f"folder:{test_dir}",
            "--workers", "0", "--out", str(tmp / f"seed{seed}" / "eval"))
    summary = json.loads((tmp / f"seed{seed}" / "eval" / "summary.json").read_text())
    meta = json.loads(out.with_suffix(".json").read_text())
    rec = meta["recipe"]
    return {"method": "ResNet-20, default recipe", "acc": summary["top1"], "ece": summary["ece"], "seconds": seconds,
            "batch": rec["batch_size"], "steps": rec["total_steps"], "kept": rec["kept"], "epoch": meta["best_epoch"],
            "temperature": (rec.get("temperature") or {}).get("temperature")}


def run(sets: list[str], seeds: list[int], extra: list[str], limit: int | None = None,
        tmp: Path | None = None, command: Callable[..., None] = resnet_lab) -> list[dict]:
    """Every set x seed x method, one row each. `limit` keeps the first images of each set (a quick check);
    `command` runs our `train` and `evaluate` (default: each in a fresh process, as typed)."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = tmp or Path(scratch)
        for name in sets:
            s = SETS[name]()
            if limit is not None:
                s = SmallSet(s.images[:limit], s.labels[:limit], s.features[:limit], s.hflip)
            for seed in seeds:
                tr, te = split(s.labels, seed)
                for row in [*classical(s, tr, te, seed), ours(s, tr, te, seed, base / name, extra, command)]:
                    rows.append({"set": name, "seed": seed, "n_train": len(tr), "n_test": len(te), **row})
                    print(f"{name} seed {seed}: {row['method']}: acc {row['acc']:.4f}  ECE {row['ece']:.4f}  "
                          f"{row['seconds']:.1f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per set and method, median [min-max] over seeds of accuracy, ECE and seconds."""
    lines = ["| set | method | seeds | test accuracy, median [min-max] | ECE, median [min-max] | seconds, median |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys((r["set"], r["method"]) for r in rows):
        part = [r for r in rows if (r["set"], r["method"]) == key]

        def spread(k: str, scale: float, fmt: str, part: list[dict] = part) -> str:
            v = [r[k] * scale for r in part]
            return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]"

        seconds = statistics.median(r["seconds"] for r in part)
        lines.append(f"| {key[0]} | {key[1]} | {len(part)} | {spread('acc', 100, '.2f')} % | "
                     f"{spread('ece', 1, '.4f')} | {seconds:.1f} |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--csv", type=Path, default=None, help="also write every row (set, seed, method) here")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set (a quick check)")
    p.add_argument("--train-args", default="", help="extra `train` options, e.g. '--steps 20' (the default: none)")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the folders and runs here and keep them (default: a temporary folder)")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = run(a.sets, a.seeds, a.train_args.split(), a.limit, tmp=a.keep)
    print(table(rows))
    if a.csv:
        print(f"wrote {write_csv(rows, a.csv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
