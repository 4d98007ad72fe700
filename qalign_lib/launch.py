"""How a prepared run is trained: in this process on one device, or as ``accelerate launch`` workers."""
from __future__ import annotations

from pathlib import Path


def launch(cfg: dict, run: Path) -> None:
    if cfg.get("launch", "single") == "single" and int(cfg.get("num_processes", 1)) == 1:
        from .training import fit

        fit(run)
        return
    raise NotImplementedError(f"launch {cfg.get('launch')!r} with {cfg.get('num_processes')} processes")
