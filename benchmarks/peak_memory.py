"""Peak resident memory of one piece of work, measured in a fresh Python process (the tests and bench_memory).

`ru_maxrss` is useless here: a child inherits pytest's resident set. Linux's
VmHWM can be reset to the current RSS by writing 5 to /proc/self/clear_refs,
so after a warm-up (imports, first-call caches) the rise of VmHWM over VmRSS is
the peak the work itself added.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_TEMPLATE = """
import gc, re
{warmup}
gc.collect()
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM, the peak resident memory, to the current one
except OSError:
    pass
rss, before = status("VmRSS"), status("VmHWM")
{work}
print(rss, before, status("VmHWM"))
"""


def added_peak(warmup: str, work: str) -> int:
    """Bytes the peak resident memory rose over the resident memory before `work` (one thread, repo on the path)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _TEMPLATE.format(warmup=warmup, work=work)], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(root))
    rss, before, peak = map(int, out.stdout.split())
    assert peak > before, "the high-water mark did not rise during the work: it would not be the work's own peak"
    return peak - rss
