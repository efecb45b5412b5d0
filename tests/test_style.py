"""One colour convention across the app (issue 25): orange = plain twin, blue = ResNet, in Research and in the
Playground alike; in Research the shade tells depth (darker = deeper) and the line style repeats the kind."""

from __future__ import annotations

from matplotlib.colors import to_rgb

from resnet_lab.research import style as S
from resnet_lab.ui import playground_plots


def _luminance(colour: str) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_plain_is_orange_resnet_blue_and_deeper_is_darker():
    for depth in (20, 56, 110, 18, 152):
        plain, res = S.line_style(f"plain{depth}"), S.line_style(f"resnet{depth}")
        pr, _, pb = to_rgb(plain["color"])
        rr, _, rb = to_rgb(res["color"])
        assert pr > pb and rb > rr, depth  # orange has more red than blue; blue the reverse
        assert (plain["ls"], res["ls"]) == (S.PLAIN_LINE, S.RESNET_LINE)
    for residual in (False, True):
        shades = [_luminance(S.net_colour(residual, d)) for d in (20, 56, 110)]
        assert shades[0] > shades[1] > shades[2], (residual, shades)


def test_the_playground_draws_with_the_same_pair():
    assert (playground_plots.PLAIN, playground_plots.RESNET) == (S.PLAIN_COLOUR, S.RESNET_COLOUR)
    assert S.net_colour(False) == S.PLAIN_COLOUR.lower() and S.net_colour(True) == S.RESNET_COLOUR.lower()
