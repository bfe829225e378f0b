"""Project root discovery, so notebooks resolve paths the same from `notebooks/`, the repo root or a copy."""

from __future__ import annotations

from pathlib import Path


def root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) that holds `params.yaml`."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return d
    raise FileNotFoundError(f"no params.yaml at or above {here}: run from inside the cft project")


def under(out: str | Path, *dirs: str) -> list[str]:
    """`dirs` moved under `out`: a notebook run by hand writes to `scratch/…`, the pipeline (out ".") to the
    project's own folders."""
    return [str(Path(out) / d) for d in dirs]
