"""`metrics.csv` that a resumed run continues instead of starting anew.

Lightning's CSVLogger deletes an existing `metrics.csv` when its folder is not empty. This one keeps it: at its first
write it drops the rows of the steps this run logs again (from its first logged step on: what an interrupted run
logged after the checkpoint it is resumed from, or a whole earlier run when training starts afresh in the folder)
and appends. The file is rewritten through a temporary file and a rename, so a kill never leaves half of it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class ResumingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that keeps the rows before this run's first logged step."""

    def __init__(self, log_dir: str) -> None:
        self._rewound = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        os.makedirs(self.log_dir, exist_ok=True)

    def save(self) -> None:
        if self.metrics and not self._rewound:
            self._rewound = True
            self._keep_before(min(int(m["step"]) for m in self.metrics))
        super().save()

    def _keep_before(self, first_step: int) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, keys = list(reader), list(reader.fieldnames or [])
        kept = [r for r in rows if (r.get("step") or "").strip() and int(float(r["step"])) < first_step]
        self.metrics_keys = sorted(keys)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(path)


class ResumingCSVLogger(CSVLogger):
    """`metrics.csv` directly in `save_dir` (no name/version folders), continued by a resumed run."""

    def __init__(self, save_dir: str) -> None:
        super().__init__(save_dir=save_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumingWriter:
        if self._experiment is None:
            self._experiment = ResumingWriter(log_dir=self.log_dir)
        return self._experiment
