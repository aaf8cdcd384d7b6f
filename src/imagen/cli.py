"""What the entry points (scripts/) share: a job run under Hydra where bad input is one `error:` line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def run_script(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> Any:
    """job(cfg, this Hydra job's run directory) for the scripts (sample, evaluate): bad input (a ValueError or
    OSError raised before or during the job) is one `error: ...` line and exit status 2, not a traceback."""
    try:
        return job(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
