"""How long the app takes to serve, against the bare import of what it imports (the issue's target: within 1.5x).

    python benchmarks/bench_startup.py [--repeats 3]

Each repeat, alternated so a busy machine slows both alike: (1) a fresh `python -c "import app"` (torch, Gradio
and the library, nothing built), (2) a fresh `python app.py` until its page answers HTTP 200. Offline, as a user
without the Hub starts it (HF_HUB_OFFLINE=1). Prints each time, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}


def time_import() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=_env(), check=True)
    return time.perf_counter() - t


def time_serving(timeout: float = 300.0) -> float:
    """Seconds from launching `python app.py` to its page answering."""
    port = _free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the app did not serve within {timeout:.0f} s")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    imports, serves = [], []
    for i in range(args.repeats):
        imports.append(time_import())
        serves.append(time_serving())
        print(f"repeat {i + 1}: import {imports[-1]:.1f} s, serving after {serves[-1]:.1f} s", flush=True)
    mi, ms = statistics.median(imports), statistics.median(serves)
    print(f"median: import {mi:.1f} s, serving after {ms:.1f} s: {ms / mi:.2f}x the bare import (target 1.5x)")


if __name__ == "__main__":
    main()
