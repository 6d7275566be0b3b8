"""The JSON-lines record of each input (or sample) of an explain run, and the job it is about.

Every record has the same keys, null where unknown, whichever executor produced it, so that
scripts reading ``--jsonl`` never depend on how a run was executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ..images import ImageError, InputItem, InputProblem
from ..outputs import OutputPaths

__all__ = ["Job", "RunInfo", "failed_record", "make_record", "refused_record", "sample_error"]


@dataclass
class Job:
    """One input to explain and the files it gets: one :class:`OutputPaths` per sample."""

    position: int  # in the run's list of inputs
    item: InputItem
    outputs: list[OutputPaths] = field(default_factory=list)
    indexed: bool = False  # outputs named NAME.0.png, NAME.1.png... (an (N,C,H,W) .npy)

    def files(self, overlay: bool) -> list[Path]:
        files = [p for o in self.outputs for p in (o.heatmap, o.relevance)]
        return files + [o.overlay for o in self.outputs] if overlay else files


@dataclass(frozen=True)
class RunInfo:
    """What every record of one run repeats."""

    model: str
    weights: str | None
    config: str
    config_source: str
    cmap: str
    device: str
    precision: str
    overlay: bool


def make_record(
    info: RunInfo,
    job: Job,
    sample: int | None = None,
    *,
    status: str = "failed",
    error: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One record; ``sample`` names the outputs it reports (None: the input failed as a whole)."""
    outputs = None
    if sample is not None:
        paths = job.outputs[sample]
        outputs = {
            "heatmap": str(paths.heatmap),
            "relevance": str(paths.relevance),
            "overlay": str(paths.overlay) if info.overlay else None,
        }
    return {
        "input": str(job.item.path),
        "sample": sample if job.indexed else None,
        "status": status,
        "error": error,
        "outputs": outputs,
        "model": info.model,
        "weights": info.weights,
        "config": info.config,
        "config_source": info.config_source,
        "target": fields.get("target"),
        "class_name": fields.get("class_name"),
        "logit": fields.get("logit"),
        "probability": fields.get("probability"),
        "relevance_sum": fields.get("relevance_sum"),
        "vmax": fields.get("vmax"),
        "cmap": info.cmap,
        "device": info.device,
        "precision": info.precision,
        "seconds": fields.get("seconds"),
        "region": fields.get("region"),
    }


def failed_record(info: RunInfo, job: Job, problem: str, advice: str = "") -> dict[str, Any]:
    """The record of an input that failed as a whole: ``PATH: problem; advice``."""
    return make_record(info, job, error=str(ImageError(job.item.path, problem, advice)))


def refused_record(info: RunInfo, problem: InputProblem) -> dict[str, Any]:
    """The failed record of an input refused while inputs were collected: ``input`` is the
    path as given, ``error`` the one-line message."""
    job = Job(-1, InputItem(Path(problem.input), PurePath(problem.input)))
    return {**make_record(info, job, error=str(problem)), "input": problem.input}


def sample_error(job: Job, k: int, problem: str, advice: str) -> str:
    """A one-line problem of one sample: ``x.npy[2]: ...`` for a sample of a stack."""
    name = f"{job.item.path}[{k}]" if job.indexed else job.item.path
    return str(ImageError(name, problem, advice))
