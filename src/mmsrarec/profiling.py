"""What a stage's manifest records about the machine and the run: package versions and peak memory.

A leaf: it imports nothing of mmsrarec but the version string, so any stage may use it.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

PACKAGES = ("torch", "numpy", "pandas", "transformers", "trl", "peft", "sentence-transformers", "faiss-cpu",
            "datasets", "accelerate")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "mmsrarec": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class PeakMemory:
    """Peak resident memory of this process while a block runs (Linux: resets VmHWM via clear_refs)."""

    def __enter__(self) -> "PeakMemory":
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            pass
        self.peak_mb = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = current_peak_mb()


def current_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
