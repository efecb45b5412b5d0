"""The shipped Research figures, redrawn from the shipped CSVs (nothing is recomputed):

    python -m resnet_lab figures [--out assets]

Each figure is written twice: `<name>.png`, panels side by side (the README, a wide screen), and
`<name>_narrow.png`, one panel per row, for a phone (the app shows whichever fits the screen). The wide one is
what each study's own command writes (`--plot`, `--out`, `--from-csv`): the same drawing functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import ASSETS
from . import curvature, gradflow, landscape, lesion

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
NARROW_SUFFIX = "_narrow"


def narrow_path(png: str | Path) -> Path:
    """Where the one-column version of a figure lives: beside it, `<stem>_narrow.png`."""
    png = Path(png)
    return png.with_name(png.stem + NARROW_SUFFIX + png.suffix)


def shipped() -> dict[str, Callable[[int | None], Figure]]:
    """PNG name -> a function drawing it (`cols`: None for the wide layout, 1 for a phone) from the shipped CSVs;
    only the figures whose CSVs are there."""
    out: dict[str, Callable[[int | None], Figure]] = {}
    if gradflow.SHIPPED_CSV.is_file():
        grads = gradflow.read_csv(str(gradflow.SHIPPED_CSV))
        out[gradflow.SHIPPED_CSV.with_suffix(".png").name] = lambda cols: gradflow.plot_all(grads, cols or 3)
    csvs = [p for p in (landscape.SHIPPED_CSV, landscape.SHIPPED_SHARPNESS_CSV) if p.is_file()]
    if csvs:  # read together, as the study's --from-csv re-reading that wrote them
        land = landscape.combine([landscape.read_csv(str(p)) for p in csvs])
        stem = landscape.SHIPPED_CSV.stem
        if land.alpha.nunique() > 7 or land.beta.nunique() > 1:
            out[f"{stem}_1d.png"] = lambda cols: landscape.plot_1d(land, cols=cols)
        if land.beta.nunique() > 1:
            out[f"{stem}_2d.png"] = lambda cols: landscape.plot_2d(land, cols=cols)
        if land.seed.nunique() > 1 or land.control.nunique() > 1:
            out[f"{stem}_sharpness.png"] = lambda cols: landscape.plot_sharpness(land, cols=cols)
    stem = curvature.SHIPPED_STEM
    if Path(f"{stem}.csv").is_file():
        spec, dens, maps = curvature.read_results(stem)
        if len(spec):
            out[f"{stem.name}_convergence.png"] = lambda cols: curvature.plot_convergence(spec, cols=cols)
        if len(dens):
            out[f"{stem.name}_density.png"] = lambda cols: curvature.plot_density(dens, cols=cols)
        if len(maps):
            out[f"{stem.name}_map.png"] = lambda cols: curvature.plot_map(maps, cols=cols)
    if lesion.SHIPPED_CSV.is_file():
        les = lesion.read_csv(lesion.SHIPPED_CSV)
        out[lesion.SHIPPED_PNG.name] = lambda cols: lesion.plot_lesion(les, cols=cols)
    return out


def render(out: str | Path = ASSETS) -> list[Path]:
    """Write every shipped figure, wide and narrow, into `out`; the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in shipped().items():
        for path, cols in ((out / name, None), (narrow_path(out / name), 1)):
            draw(cols).savefig(path, dpi=DPI)
            written.append(path)
    return written
