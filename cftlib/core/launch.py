"""Run a stage's heavy step in this process or, with several processes, under torchrun (one process per GPU):
the notebooks call `launch.run(module, args, processes)` so the same DVC stage scales from a laptop to a node."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """A torchrun job that failed; the message carries the end of its output."""


def command(module: str, args: list[str], processes: int) -> list[str]:
    """The torchrun command line of `python -m <module> <args>` on `processes` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", module, *args]


def run(module: str, args: list[str], processes: int = 1) -> None:
    """`<module>.main(args)` in this process when `processes` is 1, else under torchrun; a failure raises
    naming the command and showing the end of its output."""
    if processes == 1:
        code = importlib.import_module(module).main(args)
        if code:
            raise LaunchError(f"python -m {module} {' '.join(args)} exited with {code}")
        return
    cmd = command(module, args, processes)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stdout + done.stderr)[-4000:]
        raise LaunchError(f"{' '.join(cmd)} exited with {done.returncode}:\n{tail}")


def side_by_side(module: str, params_file: str | Path, workers: int, threads: int, paths: list) -> None:
    """`python -m <module>` run by `workers` processes side by side at `threads` torch threads each, process i
    with `--shard i/workers` (`paths`: its folder options): the finetune and ablations stages train their runs
    so, and evaluate scores them so, each then reading back what the processes wrote.
    On a CPU, small batches keep two cores half idle; two runs at a time fill them. A failed process raises
    naming its command, with the end of its output, once all have ended."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i in range(workers):
            cmd = [sys.executable, "-m", module, "--params", str(params_file), *map(str, paths),
                   "--shard", f"{i}/{workers}", "--threads", str(threads)]
            log = open(Path(tmp) / f"{i}.log", "w+")
            jobs.append((cmd, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        failed = []
        for cmd, proc, log in jobs:
            with log:
                if proc.wait():
                    log.seek(0)
                    failed.append(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log.read()[-4000:]}")
    if failed:
        raise LaunchError("\n".join(failed))


def shard(text: str) -> tuple[int, int]:
    """`--shard i/n` as (i, n), 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def device(name: str, what: str):
    """This process's torch device for a params `device` value (auto, cpu, cuda): auto is CUDA when present;
    on CUDA, the GPU of this torchrun process (cuda:LOCAL_RANK). `cuda` with no CUDA device is an error naming
    the key `what`."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LaunchError(f"{what}: cuda, but torch sees no CUDA device (use auto or cpu)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name if name != "auto" else "cpu")


@contextmanager
def distributed(cuda: bool, what: str) -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1), a process group for the block, destroyed after: NCCL on this process's
    GPU (cuda:LOCAL_RANK) when `cuda`, else gloo; outside torchrun, nothing. `what` names the params key of
    the process count, for the error when there are more processes than GPUs."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if cuda:
            rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if rank >= gpus:
                raise LaunchError(f"{what}: {world} processes, one per GPU, and this machine has {gpus}; "
                                  f"set {what} <= {gpus}")
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed job, (0, 1) outside one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
