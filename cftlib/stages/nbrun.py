"""Run a stage notebook with papermill and scrub what changes between runs, so executed notebooks
are byte-identical for identical inputs and can be committed as DVC outputs.

A notebook opened by hand writes under `scratch/` (its `out` parameter); run here, as a stage, it writes the
project's own folders (`out` "."), unless the parameters say otherwise. Cell output goes to the log as it runs.

    python -m cftlib.stages.nbrun notebooks/00_world.ipynb executed/00_world.ipynb [-p name value ...]
    python -m cftlib.stages.nbrun --strip notebooks/*.ipynb     # clear outputs of source notebooks
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import papermill as pm
import yaml
from jupyter_client.manager import KernelManager
from papermill.exceptions import PapermillExecutionError

from cftlib.core.io import atomic_path
from cftlib.core.progress import SUMMARY

_VOLATILE_NB = ("start_time", "end_time", "duration", "input_path", "output_path")
_KERNEL_TMP = re.compile(r"/tmp/ipykernel_\d+/")


def scrub(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop timestamps, random cell ids, kernel PIDs, the venv's path (warnings print it), the Python patch
    version and the seconds of progress summaries; each run of stream outputs becomes one stdout and one stderr
    output, stdout first (how the kernel cuts a print into messages is a matter of timing)."""
    meta = nb.metadata.get("papermill", {})
    for key in _VOLATILE_NB:
        meta.pop(key, None)
    nb.metadata.get("language_info", {}).pop("version", None)  # the interpreter's patch release
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        pm = cell.metadata.get("papermill", {})
        for key in ("start_time", "end_time", "duration"):
            pm.pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []) or not cell.get("id", "").isascii():
            cell["id"] = f"injected-{i}"
        if cell.cell_type != "code":
            continue
        outputs, run = [], []
        for out in cell.outputs + [None]:
            if out is not None and out.output_type == "stream":
                run.append(out)
                continue
            for name in ("stdout", "stderr"):
                if any(o.name == name for o in run):
                    text = "".join(o.text for o in run if o.name == name)
                    text = SUMMARY.sub(r"\1", _KERNEL_TMP.sub("/tmp/ipykernel/", text).replace(sys.prefix, "<venv>"))
                    outputs.append(nbformat.v4.new_output("stream", name=name, text=text))
            run = []
            if out is not None:
                outputs.append(out)
        cell.outputs = outputs
    for i, cell in enumerate(nb.cells):  # papermill's error banner cells get random ids too
        if cell.cell_type == "markdown" and "papermill-error-cell-tag" in cell.metadata.get("tags", []):
            cell["id"] = f"papermill-error-{i}"
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Source form of a notebook: no outputs, no execution counts, no run metadata."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("papermill", None)
    return nb


def failed_path(output: str | Path) -> Path:
    """Where a failed run's notebook is kept, scrubbed, for reading (until the next success)."""
    return Path(output).with_suffix(".failed.ipynb")


def run(notebook: str | Path, output: str | Path, parameters: dict[str, Any] | None = None,
        cwd: str | Path | None = None, log_output: bool = False) -> Path:
    """Execute `notebook` into `output` (atomically) with papermill's `python3` kernel, then scrub; a notebook
    with an `out` parameter gets "." (the pipeline's folders) unless `parameters` set it. Every run
    first removes the temporary folders a killed run left (DVC runs one stage at a time, so no other writer of
    `output` is alive); a success also removes the failed notebook of an earlier run."""
    output = Path(output)
    if _declares(notebook, "out"):
        parameters = {"out": ".", **(parameters or {})}
    for stale in output.parent.glob(f".{output.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_path(output) as tmp, tempfile.TemporaryDirectory(prefix="cft-kernel-") as sockets:
        try:  # the kernel on local IPC sockets (files in a private folder), not unencrypted TCP ports
            km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters or {}, kernel_name="python3",
                                cwd=str(cwd) if cwd else None, progress_bar=False, log_output=log_output,
                                stdout_file=sys.stdout if log_output else None,
                                stderr_file=sys.stderr if log_output else None,
                                request_save_on_cell_execute=False, km=km)
        finally:
            if km.has_kernel:  # nbclient shuts down only a kernel manager of its own
                km.shutdown_kernel()  # keep the failed notebook next to the output for reading, scrubbed
            if tmp.exists():
                nb = scrub(nbformat.read(tmp, as_version=4))
                nbformat.write(nb, tmp)
                if not _succeeded(nb):
                    nbformat.write(nb, failed_path(output))
    failed_path(output).unlink(missing_ok=True)
    return output


def _declares(notebook: str | Path, name: str) -> bool:
    """Whether the notebook's `parameters` cell assigns `name`."""
    assign = re.compile(rf"^{re.escape(name)}\s*=", re.M)
    return any("parameters" in c.metadata.get("tags", []) and assign.search(c.source)
               for c in nbformat.read(notebook, as_version=4).cells)


def _succeeded(nb: nbformat.NotebookNode) -> bool:
    return not any(c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs) for c in nb.cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.nbrun", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="notebook and output, or notebooks with --strip")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--strip", action="store_true", help="clear outputs of source notebooks in place")
    args = ap.parse_args(argv)
    if args.strip:
        for p in args.paths:
            nbformat.write(strip(nbformat.read(p, as_version=4)), p)
        return 0
    if len(args.paths) != 2:
        ap.error("give a notebook and an output path")
    params = {name: yaml.safe_load(value) for name, value in args.parameter}
    try:
        run(*args.paths, parameters=params, log_output=True)
    except PapermillExecutionError as e:  # one line naming the cause; the traceback is in the failed notebook
        cause = " ".join(str(e.evalue).split())
        print(f"{args.paths[0]} failed in cell {e.exec_count}: {e.ename}: {cause} (traceback: "
              f"{failed_path(args.paths[1])}). Under `dvc repro` this stage's outputs were deleted before it ran; "
              f"the committed ones come back with `make profile PROFILE=default`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
