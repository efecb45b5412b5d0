"""The curvature reading at scale: paired tests over image sets held to scipy's and to hand-worked numbers, a
verdict only where it holds at the two largest n, how far a quantity still moves with n, the leave-one-out and fit
controls, and the words that follow each of them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from resnet_lab.research import curvature as K
from resnet_lab.research import verdicts as V
from resnet_lab.research.curvature import scale as S


def spectrum(values: dict[str, dict[int, list[float]]], loss: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows as `compute_curvature` writes them: per model, size n and set, lambda_max = the value given, the trace
    10x it, lambda_min -1 % of it, the loss from `loss` (default 0.01, scaled with lambda_max / 100)."""
    rows = []
    for model, by_n in values.items():
        for n, tops in by_n.items():
            for k, v in enumerate(tops):
                tag = f"set{k}"
                lo = (loss or {}).get(model, 0.01) * v / 100
                rows += [(model, n, tag, "eigenvalue", 1, v), (model, n, tag, "trace", 0, 10 * v),
                         (model, n, tag, "trace_se", 0, 0.1), (model, n, tag, "loss", 0, lo),
                         (model, n, tag, "accuracy", 0, 1.0), (model, n, tag, "lambda_min", 0, -0.01 * v),
                         (model, n, tag, "ratio", 0, 0.01), (model, n, tag, "worst_share", 0, 0.5)]
            rows.append((model, n, "set0", "lambda_max_loo", 0, 0.5 * tops[0]))
    return pd.DataFrame(rows, columns=K.compute.COLUMNS)


FLATTER = {"resnet20": {64: [40, 90, 20], 256: [30, 33, 31], 1024: [20, 21, 20.5]},
           "plain20": {64: [80, 45, 30], 256: [60, 65, 62], 1024: [40, 42, 41.5]}}


def test_paired_test_is_scipys_on_the_sets_at_that_n():
    spec = spectrum(FLATTER)
    t = S.paired(spec, "resnet20", "plain20", "lambda_max", 1024)
    ref = stats.ttest_rel([40, 42, 41.5], [20, 21, 20.5])
    assert t["t"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue) and t["df"] == 2
    assert t["ratio"] == pytest.approx(41.1667 / 20.5, rel=1e-4) and t["larger"] == "plain20"
    assert S.paired(spec, "resnet20", "plain20", "lambda_max", 64)["larger"] == "none"  # 2.0, 0.5, 1.5x: p > .05
    same = spectrum({"resnet20": {8: [1, 2]}, "plain20": {8: [3, 4]}})  # identical differences: no spread, p 0
    assert S.paired(same, "resnet20", "plain20", "lambda_max", 8)["larger"] == "plain20"
    one = spectrum({"resnet20": {8: [1]}, "plain20": {8: [3]}})
    assert S.paired(one, "resnet20", "plain20", "lambda_max", 8)["larger"] == "too few sets"


def test_a_verdict_holds_only_where_both_of_the_largest_n_agree():
    spec = spectrum(FLATTER)
    v = S.verdict(spec, "resnet20", "plain20", "lambda_max")
    assert v["holds"] == "plain20" and [t["n"] for t in v["tests"]] == [256, 1024]
    flipped = spectrum({**FLATTER, "plain20": {**FLATTER["plain20"], 256: [29, 34, 30]}})  # 256: no difference
    assert S.verdict(flipped, "resnet20", "plain20", "lambda_max")["holds"] is None
    assert S.verdict(spectrum({k: {1024: d[1024]} for k, d in FLATTER.items()}), "resnet20", "plain20",
                     "lambda_max")["holds"] is None  # one size: nothing to hold it against


def test_settling_compares_two_doublings_with_the_spread_at_the_largest_n():
    spec = spectrum(FLATTER)
    st = S.settling(spec, "lambda_max", "resnet20")
    assert (st["n"], st["from_n"]) == (1024, 256) and not st["settled"]  # 31.3 -> 20.5, spread 0.5
    assert st["spread"] == pytest.approx(np.std([20, 21, 20.5], ddof=1))
    flat = spectrum({"resnet20": {256: [20, 22, 21], 1024: [20, 21.5, 21]}})
    assert S.settling(flat, "lambda_max", "resnet20")["settled"]
    ladder = spectrum({"resnet20": {64: [50, 50], 128: [40, 40], 256: [21, 22], 512: [21, 21]}})
    assert S.settling(ladder, "lambda_max", "resnet20")["from_n"] == 128  # n / 4, not the next smaller size


def test_leave_one_out_and_the_fit_control_by_hand():
    spec = spectrum(FLATTER)
    loo = S.leave_one_out(spec)
    assert len(loo) == 6 and np.allclose(loo.change, -0.5) and np.allclose(loo.worst_share, 0.5)
    # lambda_max = 100 * loss / 0.01 for resnet20 and = 100 * loss / 0.02 for plain20 (the loss is the given base x
    # lambda_max / 100): slope 1 for both, and at one matched loss plain20's line gives half resnet20's
    fit = S.fit_control(spectrum(FLATTER, loss={"plain20": 0.02}), "resnet20", "plain20")
    assert fit["slope_res"] == pytest.approx(1.0) and fit["slope_plain"] == pytest.approx(1.0)
    assert fit["matched"] == pytest.approx(0.5) and fit["points"] == 9
    assert fit["measured"] == pytest.approx(np.mean([40, 42, 41.5]) / np.mean([20, 21, 20.5]))


def test_the_reading_follows_the_numbers():
    text = K.describe_curvature(spectrum(FLATTER))
    assert "- resnet20: n = 1024: loss" in text and "**plain20's is the larger at both of the largest n**" in text
    assert "resnet20's minimum is the flatter by this measure" in text
    assert "still moving (31.3 at n = 256 → 20.5 at 1024" in text
    assert "moves λmax by 50% at n = 64 (that image carries 50% of the loss) and by 50% at n = 1024" in text
    reverse = {"resnet20": FLATTER["plain20"], "plain20": FLATTER["resnet20"]}
    assert "**resnet20's is the larger at both" in K.describe_curvature(spectrum(reverse))
    noisy = {**FLATTER, "plain20": {**FLATTER["plain20"], 1024: [12, 40, 30]}}
    assert "top eigenvalue λmax (sharpness): no difference that holds" in K.describe_curvature(spectrum(noisy))
    fit = K.describe_curvature(spectrum(FLATTER, loss={"plain20": 0.02}))
    assert "the difference in fit explains little of it" in fit  # matched 0.5x against 2x measured: opposite
    # plain20's sets fit as well as resnet20's at the same λmax: its larger λmax comes with a larger loss, and at a
    # matched loss the lines agree (1.0x): the fit explains the gap
    same_line = K.describe_curvature(spectrum(FLATTER))
    assert "gives plain/ResNet 1.00x at one matched loss" in same_line and "explains most of the gap" in same_line
    assert "no gap for the fit to explain" in K.describe_curvature(spectrum(noisy))


def test_the_verdicts_name_the_flatter_net_only_where_it_holds():
    spec = spectrum(FLATTER)
    text = V.curvature(spec)
    assert text.startswith("resnet20 sits in the flatter minimum by the full Hessian (resnet20 vs plain20 at n = 1024")
    plain = V.curvature_plain(spec)
    assert plain.startswith("At 20 layers, measured on 1024 training images, resnet20's minimum is the flatter bowl: "
                            f"in its steepest direction the loss curves up {41.1667 / 20.5:.1f} times less sharply")
    assert "and the same holds on 256 images" in plain
    # the losses grow with λmax alike in both nets (FLATTER): the fit explains the gap, and both layers say so
    assert "but plain20 also fits its training images less closely, and that explains most of the gap" in plain
    assert "matched for training loss, the top eigenvalue ratio shrinks from 2.01x to 1.00x" in text
    tighter = spectrum(FLATTER, loss={"plain20": 0.005})  # plain20 fits better at the same λmax: not the fit
    assert "fits its training images less closely" not in V.curvature_plain(tighter)
    assert "matched for training loss" not in V.curvature(tighter)
    assert "still shrink as more images are used (resnet20: 31 on 256 images, 20 on 1024)" in plain
    assert "true bowl" in plain and "Hessian" not in plain
    noisy = spectrum({**FLATTER, "plain20": {**FLATTER["plain20"], 1024: [12, 40, 30]}})
    assert "no difference in sharpness that a paired test finds at both n = 256 and 1024" in V.curvature(noisy)
    assert "show no difference in sharpness that holds as the images grow" in V.curvature_plain(noisy)


def test_a_map_is_read_only_at_an_n_where_the_ratio_has_settled():
    spec = spectrum({"resnet20": {64: [40, 41, 40], 256: [40, 41, 40]}, "plain20": {64: [80, 81, 80],
                                                                                    256: [80, 81, 80]}})
    rows = [(m, n, 0, a, b, 0.01, 1.0, 10.0, -r * 10, r, 40, 1.0) for m, r in (("resnet20", 0.2), ("plain20", 0.03))
            for n in (16,) for a in (-0.2, 0.0, 0.2) for b in (-0.2, 0.0, 0.2)]
    maps = pd.DataFrame(rows, columns=K.compute.MAP_COLUMNS)
    assert "Not read: each point's Hessian is taken on 16 images" in K.describe_curvature(spec, maps)
    big = maps.assign(n=256)
    text = K.describe_curvature(spec, big)
    assert "larger for resnet20 on this plane" in text and "no verdict" in text and "**resnet20's basin" not in text
    assert not math.isnan(K.describe.map_table(big).ratio_w0.iloc[0])


def test_from_csv_refuses_typos_empty_broken_and_repeated_files_in_one_line(tmp_path, capsys):
    from resnet_lab.__main__ import main

    spec = spectrum({"resnet20": {64: [20, 21]}, "plain20": {64: [40, 41]}})
    spec.to_csv(tmp_path / "ok.csv", index=False)
    spec.head(0).to_csv(tmp_path / "header.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    text = spec.astype({"value": object})
    text.loc[3, "value"] = "oops"
    text.to_csv(tmp_path / "text.csv", index=False)
    nan = spec.copy()
    nan.loc[2, "value"] = math.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    for stem, said in (("missing", "no "), ("header", "no rows"), ("empty", "empty.csv is empty"),
                       ("text", "'oops' on data row 4"), ("nan", "'nan' on data row 3"),
                       ("ok,ok", "the same image set read twice")):
        stems = ",".join(str(tmp_path / s) for s in stem.split(","))
        assert main(["curvature", "--from-csv", stems, "--quiet"]) == 2, stem
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (stem, err)
    assert main(["curvature", "--from-csv", str(tmp_path / "ok"), "--quiet"]) == 0


def test_one_image_set_reads_without_nan():
    text = K.describe_curvature(spectrum({"resnet20": {4: [20], 16: [21]}}))
    assert "nan" not in text and "one set, no spread to judge it by" in text
