"""Planning a run: each input's output files, and which inputs are already settled.

Planning happens once, in the process that starts the run, before any executor sees a job:
an input whose outputs all exist is skipped (``existing="skip"``, the resume), one whose
outputs exist is refused (``"error"``), and two inputs that would write the same file are
caught here, so no executor can write a file twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..images import InputItem
from ..messages import error_reason
from ..outputs import OutputError, OutputPaths, output_paths, temporary_writer
from .records import Job, RunInfo, failed_record, make_record

__all__ = ["Plan", "plan_run", "remove_stale_temporaries", "sample_outputs"]


@dataclass
class Plan:
    """The jobs to explain, and the records of the inputs settled while planning."""

    jobs: list[Job] = field(default_factory=list)
    settled: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by position


def plan_run(items: Sequence[InputItem], out: Path, existing: str, info: RunInfo) -> Plan:
    """Plan ``items`` (positions = their indices) into ``out``; see the module doc."""
    plan = Plan()
    claimed: set[str] = set()  # output paths of this run, to catch two inputs sharing one
    for position, item in enumerate(items):
        job = Job(position, item)
        records = _settle(job, out, existing, info, claimed)
        if records is None:
            plan.jobs.append(job)
        else:
            plan.settled[position] = records
    return plan


def _settle(job: Job, out: Path, existing: str, info: RunInfo, claimed: set[str]):
    """Fill in ``job``'s outputs; its records if it needs no explaining, else None."""
    try:
        samples = _npy_samples(job.item.path) if job.item.path.suffix.lower() == ".npy" else None
        job.indexed = samples is not None
        job.outputs = sample_outputs(out, job.item, samples)
    except OutputError as error:
        return [make_record(info, job, error=str(error))]
    paths = job.files(info.overlay)
    try:
        present = [p for p in paths if p.exists()]
    except OSError as error:  # e.g. a name too long for the file system
        problem = f"cannot check its outputs: {error_reason(error)}"
        return [failed_record(info, job, problem, "rename the input")]
    clash = next((p for p in paths if _key(p) in claimed), None)
    if clash is not None:
        problem = f"its output {clash} is also the output of another input"
        return [failed_record(info, job, problem, "rename one of the two inputs")]
    claimed.update(_key(p) for p in paths)
    if existing == "skip" and present and len(present) == len(paths):
        return [make_record(info, job, k, status="skipped") for k in range(len(job.outputs))]
    if present and existing == "error":
        problem = f"output {present[0]} already exists"
        advice = "pass --overwrite to replace it or --skip-existing to keep it"
        return [failed_record(info, job, problem, advice)]
    return None


def sample_outputs(out: Path, item: InputItem, samples: int | None) -> list[OutputPaths]:
    """``OUT/NAME.*``, or ``OUT/NAME.K.*`` for each sample of an (N, C, H, W) ``.npy``."""
    relative = item.relative
    if samples is None:
        return [output_paths(out, relative)]
    return [
        output_paths(out, relative.with_name(f"{relative.stem}.{k}{relative.suffix}"))
        for k in range(samples)
    ]


def _npy_samples(path: Path) -> int | None:
    """Samples in an (N, C, H, W) ``.npy``, from its header only; None for anything else."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # unreadable or not an array: loading reports it properly
        return None
    return int(array.shape[0]) if array.ndim == 4 and array.shape[0] > 0 else None


def _key(path: Path) -> str:
    return str(path).casefold()


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a killed run (SIGKILL cannot clean up after itself).

    Only files that a process of this host wrote and that is gone are touched, so runs
    writing into the same folder at the same time, here or on other nodes of a cluster
    (whose processes cannot be seen from here), keep theirs.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            writer = temporary_writer(name)
            if writer is not None and not _alive(writer):
                Path(root, name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True
