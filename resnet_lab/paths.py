"""Where the project's own files are: the shipped weights, results and examples under assets/."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS = PROJECT_ROOT / "assets"
