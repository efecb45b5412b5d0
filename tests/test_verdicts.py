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


def _paired_by_hand(raw: pd.DataFrame, res: str, plain: str, quantity: str) -> tuple[list[int], str | None]:
    """The two largest sizes at which both nets have `quantity` (λmax: "eigenvalue" index 1), and the net a paired
    t-test (scipy's, p < 0.05) finds larger at both of them, or None; from the shipped CSV's rows alone."""
    from scipy import stats

    index = 1 if quantity == "eigenvalue" else 0
    d = raw[(raw.quantity == quantity) & (raw["index"] == index)]
    ns = sorted(set(d[d.model == res].n) & set(d[d.model == plain].n))[-2:]
    winners = set()
    for n in ns:
        a, b = (d[(d.model == m) & (d.n == n)].set_index("images").value for m in (res, plain))
        t, p = stats.ttest_rel(b[a.index], a)
        winners.add((plain if t > 0 else res) if p < 0.05 else None)
    return ns, (winners.pop() if len(winners) == 1 else None)


def test_curvature_verdict_names_the_flatter_net_only_where_a_paired_test_holds_at_the_two_largest_n():
    raw = pd.read_csv(f"{curvature.SHIPPED_STEM}.csv")
    text = V.curvature(curvature.read_results(curvature.SHIPPED_STEM)[0])
    for res, plain in (("resnet56", "plain56"), ("resnet20", "plain20")):
        ns, top = _paired_by_hand(raw, res, plain, "eigenvalue")
        _, trace = _paired_by_hand(raw, res, plain, "trace")
        held = {top, trace} - {None}
        if len(held) == 1:
            sharper = held.pop()
            assert f"{plain if sharper == res else res} sits in the flatter minimum by the full Hessian ({res} vs " \
                f"{plain} at n = {ns[-1]}" in text
        else:
            assert f"{res} and {plain}: no difference in sharpness that a paired test finds at both n = " \
                f"{ns[0]} and {ns[1]}" in text
    ratio = raw[raw.quantity == "ratio"]
    largest = ratio[ratio.n == ratio.groupby("model").n.transform("max")].groupby("model").value.mean().max()
    assert f"at most {largest:.3f}" in text


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


def test_plain_curvature_sentence_quotes_the_top_eigenvalues_at_the_largest_n():
    """The student's sentence quotes each pair's mean λmax over the image sets at the largest n (worked out here
    from the CSV's rows), the points at the right of the convergence figure, and swaps with the nets."""
    spec = curvature.read_results(curvature.SHIPPED_STEM)[0]
    raw = pd.read_csv(f"{curvature.SHIPPED_STEM}.csv")
    top = raw[(raw.quantity == "eigenvalue") & (raw["index"] == 1)]
    text = V.curvature_plain(spec)
    assert "true bowl" in text or "saddles" in text
    assert "Hessian" not in text and "paired" not in text
    trace_rows = raw[(raw.quantity == "trace") & (raw["index"] == 0)]
    for res, plain in (("resnet56", "plain56"), ("resnet20", "plain20")):
        ns, by_top = _paired_by_hand(raw, res, plain, "eigenvalue")
        ns_trace, by_trace = _paired_by_hand(raw, res, plain, "trace")
        sharper = by_top or by_trace  # λmax where it holds, else the trace: the measure the sentence quotes
        rows, n = (top, ns[-1]) if by_top else (trace_rows, ns_trace[-1])
        mean = {m: rows[(rows.model == m) & (rows.n == n)].value.mean() for m in (res, plain)}
        if sharper and by_trace in (None, sharper) and by_top in (None, sharper):
            flatter = plain if sharper == res else res
            assert f"measured on {n} training images, {flatter}'s minimum is the flatter bowl" in text
            said = "times less sharply than" if by_top else "times gentler than"
            assert f"{mean[sharper] / mean[flatter]:.1f} {said} {sharper}'s ({mean[flatter]:.0f} against " \
                f"{mean[sharper]:.0f})" in text
        else:
            assert f"{res} and {plain} show no difference in sharpness" in text
    fig = curvature.plot_convergence(spec)  # the figure the sentence points at has every net's curve
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert all(m in legend for m in ("resnet56", "plain56", "resnet20", "plain20"))
    swapped = spec.copy()  # the two 56-layer nets' numbers exchanged: the other one is now the flatter
    swapped["model"] = swapped.model.replace({"resnet56": "plain56", "plain56": "resnet56"})
    sharper = _paired_by_hand(raw, "resnet56", "plain56", "eigenvalue")[1] or \
        _paired_by_hand(raw, "resnet56", "plain56", "trace")[1]
    if sharper:
        assert f"{sharper}'s minimum is the flatter bowl" in V.curvature_plain(swapped)


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
