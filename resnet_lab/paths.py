"""Where the project's own files are: the shipped weights, results and examples.

In a source checkout they are `assets/` beside the package; an installed wheel carries the same folder inside
the package (`resnet_lab/assets`, see pyproject.toml), so both find them without a network.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE.parent
ASSETS = PACKAGE / "assets" if (PACKAGE / "assets").is_dir() else PROJECT_ROOT / "assets"
