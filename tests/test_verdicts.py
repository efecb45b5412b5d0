"""Each study at a glance (research/verdicts.py): the sentences follow the numbers, so the shipped results give the
shipped verdicts and altered numbers turn them around. Read from the shipped CSVs and from copies the tests change."""

from __future__ import annotations

import pandas as pd

from resnet_lab.research import curvature, degradation, gradflow, landscape, lesion
from resnet_lab.research import verdicts as V


def _plain56_trains_as_plain20(df: pd.DataFrame) -> pd.DataFrame:
    """The shipped curves with plain56's made exactly plain20's: no degradation to report."""
    same = df.copy()
    for metric in same.metric.unique():
        src = same[(same.arch == "plain20") & (same.metric == metric)].value.to_numpy()
        same.loc[(same.arch == "plain56") & (same.metric == metric), "value"] = src
    return same


def test_degradation_verdict_follows_the_final_losses():
    df = degradation.read_csv()
    final = degradation.final_metrics(df).set_index("arch")
    text = V.degradation(df)
    assert f"{final.loc['plain56', 'train_loss_smooth']:.2f} (chance level)" in text
    assert f"{final.loc['resnet56', 'val_acc']:.0%}" in text and "degradation, as in He et al. 2015" in text
    assert "does not show degradation" in V.degradation(_plain56_trains_as_plain20(df))


def test_gradient_verdict_follows_the_first_to_last_ratios():
    summary = gradflow.summarize(gradflow.read_csv(str(gradflow.SHIPPED_CSV)))
    text = V.gradients(summary)
    res = summary[(summary.variant == "residual") & (summary.arch == "resnet110")].iloc[0]
    plain = summary[(summary.variant == "plain") & (summary.arch == "resnet110")].iloc[0]
    assert f"10^{plain.log10_ratio_mean:.1f}" in text and f"10^{res.log10_ratio_mean:.1f}" in text
    assert f"10^{plain.log10_ratio_mean - res.log10_ratio_mean:.1f} times closer" in text
    flat = summary.copy()
    flat.loc[flat.variant == "plain", "log10_ratio_mean"] = flat[flat.variant == "residual"].log10_ratio_mean.values
    assert "make no difference" in V.gradients(flat)


def test_landscape_verdict_counts_what_survives_every_control():
    df = landscape.combine([landscape.read_csv(str(p)) for p in (landscape.SHIPPED_CSV,
                                                                 landscape.SHIPPED_SHARPNESS_CSV)])
    text = V.landscape(df)
    assert text.startswith("Of 8 comparisons") and "2 survive every control" in text
    assert "resnet20 is the sharper at α = 0.5" in text and "plain56 is the sharper at α = 0.1" in text
    assert "no rule that ResNets sit in flatter minima" in text  # one each way
    one_way = df[~((df.model == "resnet20") | (df.model == "plain20"))]
    assert "the ResNet is the flatter" in V.landscape(one_way)


def test_curvature_verdict_names_the_flatter_net_only_where_every_image_set_agrees():
    spec, _, _ = curvature.read_results(curvature.SHIPPED_STEM)
    text = V.curvature(spec)
    assert "resnet56 sits in the flatter minimum" in text and "resnet20 and plain20: no consistent difference" in text
    worst = curvature.spectrum_table(spec).ratio.max()
    assert f"at most {worst:.3f}" in text


def _lesion_clause(df: pd.DataFrame, model: str) -> str:
    """What the verdict must say of `model`, from its rows: the intact accuracy is the mean of the k = 0 draws,
    a deletion's cost is that less its accuracy, and within 10 points of chance counts as chance."""
    d = df[df.model == model]
    intact = d[(d.kind == "random") & (d.k == 0)].accuracy.mean()
    single = d[(d.kind == "single") & d.removable]
    cost = intact - single.accuracy
    at_chance = (single.accuracy <= d.chance.iloc[0] + 0.10).sum()
    return (f"deleting one block of {model} costs a median {100 * cost.median():.1f} points (at most "
            f"{100 * cost.max():.1f}; {at_chance} of {len(single)} deletions leave it at chance)")


def test_lesion_verdict_compares_what_one_deletion_costs():
    df = lesion.read_csv(lesion.SHIPPED_CSV)
    text = V.lesion(df)
    assert "0 of 27 deletions leave it at chance" in text and "20 of 25" in text and "Veit et al. 2016" in text
    assert text.startswith(f"Trained on Shapes, {_lesion_clause(df, 'resnet56')}; {_lesion_clause(df, 'plain56')}.")
    shallow = df[df.model.isin(["resnet20", "plain20"])]  # the deepest pair present is the one read
    assert f"{_lesion_clause(df, 'resnet20')}; {_lesion_clause(df, 'plain20')}." in V.lesion(shallow)
    broken = df.copy()  # every single deletion of the ResNet sends it to chance: no ensemble to report
    rows = (broken.model == "resnet56") & (broken.kind == "single")
    broken.loc[rows, "accuracy"] = broken.loc[rows, "chance"]
    assert "Veit" not in V.lesion(broken)
    assert V.lesion(pd.DataFrame(df[df.model == "plain20"])) == "No twin pair in this study."


# --- the student's layer: the same numbers, plain words; changed numbers change the sentence ---

def test_plain_degradation_sentence_follows_the_final_losses():
    df = degradation.read_csv()
    final = degradation.final_metrics(df).set_index("arch")
    text = V.degradation_plain(df)
    assert f"training loss {final.loc['plain56', 'train_loss_smooth']:.2f}, no better than guessing" in text
    assert f"gets to {final.loc['resnet56', 'train_loss_smooth']:.2f}" in text and "shortcuts fix that" in text
    changed = V.degradation_plain(_plain56_trains_as_plain20(df))
    assert "guessing" not in changed and "no degradation to see" in changed


def test_plain_gradient_sentence_says_grows_not_vanishes_from_the_ratios():
    summary = gradflow.summarize(gradflow.read_csv(str(gradflow.SHIPPED_CSV)))
    plain = summary[(summary.variant == "plain") & (summary.arch == "resnet110")].iloc[0]
    text = V.gradients_plain(summary)
    assert f"{10 ** plain.log10_ratio_mean / 1e6:.1f} million times the last layer's" in text
    assert "does not vanish here, it grows toward the input" in text and "10^" not in text
    fading = summary.copy()  # the plain nets' gradients made to shrink 1000x toward the input instead
    fading.loc[fading.variant == "plain", "log10_ratio_mean"] = -3.0
    changed = V.gradients_plain(fading)
    assert "1,000 times smaller than the last layer's" in changed and "fades" in changed
    assert "does not vanish" not in changed


def test_plain_landscape_sentence_counts_what_survives():
    df = landscape.combine([landscape.read_csv(str(p)) for p in (landscape.SHIPPED_CSV,
                                                                 landscape.SHIPPED_SHARPNESS_CSV)])
    text = V.landscape_plain(df)
    assert "of 8 comparisons, 2 show a clear difference" in text and "point opposite ways" in text
    assert "control" not in text and "α" not in text  # no referee's vocabulary
    one_way = df[~((df.model == "resnet20") | (df.model == "plain20"))]
    assert "every one says the ResNet's valley is the flatter" in V.landscape_plain(one_way)


def test_plain_curvature_sentence_quotes_the_top_eigenvalues_the_figure_marks():
    spec, dens, _ = curvature.read_results(curvature.SHIPPED_STEM)
    table = curvature.spectrum_table(spec).set_index("model")
    r, p = table.loc["resnet56"].lambda_max_mean, table.loc["plain56"].lambda_max_mean
    text = V.curvature_plain(spec)
    assert f"{p / r:.1f} times less sharply than plain56's ({r:.0f} against {p:.0f}" in text
    assert "true bowl" in text and "Hessian" not in text
    fig = curvature.plot_density(dens, spec)  # the numbers quoted are written on the figure
    legend = " ".join(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
    assert f"λmax {r:.0f}" in legend and f"λmax {p:.0f}" in legend
    swapped = spec.copy()  # the two 56-layer nets' numbers exchanged: the other one is now the flatter
    swapped["model"] = swapped.model.replace({"resnet56": "plain56", "plain56": "resnet56"})
    assert "plain56's minimum is the flatter bowl" in V.curvature_plain(swapped)


def test_plain_curvature_sentence_says_how_far_the_image_sets_disagree():
    """The shipped λmax moves several-fold with the image set it is measured on: the student's sentence says so,
    with the net whose sets disagree most (worked out here from the rows), and says nothing of it for one set."""
    spec, _, _ = curvature.read_results(curvature.SHIPPED_STEM)
    top = spec[(spec.quantity == "eigenvalue") & (spec["index"] == 1)]
    spread = {m: (g.value.min(), g.value.max()) for m, g in top.groupby("model")}
    widest = max(spread, key=lambda m: spread[m][1] / spread[m][0])
    lo, hi = spread[widest]
    text = V.curvature_plain(spec)
    assert f"mean over {spec.images.nunique()} sets of training images" in text
    assert f"{widest}'s λmax runs from {lo:.0f} to {hi:.0f} across them" in text and "provisional" in text
    one = spec[spec.images == spec.images.iloc[0]]
    assert "provisional" not in V.curvature_plain(one)


def test_plain_lesion_sentence_follows_what_one_deletion_costs():
    df = lesion.read_csv(lesion.SHIPPED_CSV)
    text = V.lesion_plain(df)
    assert "never dropping to guessing" in text and "20 of 25 cuts leaving it guessing" in text
    assert "team of shallower nets" in text
    broken = df.copy()
    rows = (broken.model == "resnet56") & (broken.kind == "single")
    broken.loc[rows, "accuracy"] = broken.loc[rows, "chance"]
    changed = V.lesion_plain(broken)
    assert "27 of 27 such cuts leave it guessing" in changed and "team" not in changed
