"""Result tables read back: a CSV a person or the app picks is checked for the columns its reader needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def read_checked_csv(path: str | Path, columns: list[str], kind: str, **read_kw: Any) -> pd.DataFrame:
    """`pd.read_csv(path, **read_kw)`, refused with a message naming the file and the missing columns when it is
    not a `kind` CSV (a wrong file would otherwise fail later with a KeyError nobody can act on)."""
    try:
        df = pd.read_csv(path, **read_kw)
    except pd.errors.EmptyDataError:  # a ValueError too: callers that refuse bad files catch it
        raise ValueError(f"{Path(path).name} is empty") from None
    missing = set(columns) - set(df.columns)
    if missing:
        raise ValueError(f"{Path(path).name} is not a {kind} CSV: missing columns {sorted(missing)}")
    return df
