"""The degradation reading: each verdict (worse, better, about as well, stuck at chance) follows the measured
ratio of final smoothed training losses, so a run that does not show degradation says so."""

from __future__ import annotations

import math

import pandas as pd

from ...data.shapes import CLASSES


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
