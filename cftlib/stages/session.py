"""The one setup call every stage notebook makes: run from the project root, load the params and check them
(names against the registries too), check
that the stage's inputs are on disk, and move its output folders under `out` (a hand run writes to scratch/)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from cftlib.core import config, paths
from cftlib.report import figures
from cftlib.stages import params, preflight


def start(params_file: str, stage: str, out: str = ".", **dirs: str) -> tuple[config.Params, SimpleNamespace]:
    """(params, folders): `dirs` (name → folder) moved under `out`, as Paths; every missing input of `stage`
    (preflight.require) reported before any work; torch at `base.threads`; figures shown at screen resolution."""
    os.chdir(paths.root())
    P = params.load(params_file)
    preflight.require(P, stage)
    torch.set_num_threads(P.base.threads)
    figures.inline()
    pd.set_option("display.precision", 3)
    return P, SimpleNamespace(**{name: Path(d) for name, d in zip(dirs, paths.under(out, *dirs.values()))})
