"""The Ray Data executor (``lrp explain --executor ray``): the same run on a laptop or a cluster.

The jobs become a Ray dataset of input paths, in chunks of about ``batch_size`` samples (so a
chunk is a batch exactly as the local executor forms it, and outputs are the same bit for bit);
an actor pool (``map_batches``) decodes each chunk with our own decoder and explains it with a
:class:`~lrp_cli.pipeline.batch.BatchWork` built once per actor, from the model, rules and
options shipped once through the object store. The actors write the outputs themselves,
atomically, into the run's output folder (which every node must see at the same path, like the
inputs), and send back only the records, which the driver yields as chunks complete.

Faults: an actor whose process dies (killed, out of memory, its node lost) is restarted by
Ray, as often as needed, and the chunk it was working on is retried, up to ``retries`` times;
the failed attempt returns nothing, so no input is reported twice (files it wrote are replaced
atomically by the same bytes). A chunk that still fails (an input that kills its worker every
time) is dropped by Ray Data, its inputs get failed records, and the rest of the run goes on.

Ray Data's own defaults (``ActorPoolMapOperator._apply_default_remote_args`` in Ray 2.60:
``max_restarts=-1``, ``max_task_retries=-1``) retry a chunk forever, so such an input would
never end the run; a finite ``max_restarts`` is worse: an actor past it stays dead and every
chunk queued on it fails. Hence ``max_restarts=-1`` with a finite ``max_task_retries``, passed
as ``map_batches``' extra remote arguments (deprecated since Ray 2.5x, to be removed in 2.64,
with no named replacement yet).

Ray is imported only here, inside functions, so that ``lrp`` never needs it otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import pickle
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..images import InputItem, try_decode_input
from ..messages import debugging, error_reason
from .batch import BatchFiller, BatchWork
from .plan import remove_stale_temporaries
from .prepare import SetupError
from .records import Job, failed_record, make_record

__all__ = ["MissingExtra", "RayExecutor"]

Records = list[dict[str, Any]]

INSTALL_HINT = "--executor ray needs Ray: pip install 'lrp-cli[ray]'"
#: blocks of the dataset at most (a block is the unit of a retry and of the records' return)
MAX_BLOCKS = 10_000


class MissingExtra(SetupError):
    """An optional dependency the chosen executor needs is not installed; one line."""


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return ray


class RayExecutor:
    """Runs the jobs of a run on a Ray cluster (a local one, started here, without ``address``).

    ``address``: the cluster's (``ray://HOST:10001``, ``HOST:6379``, ``auto``); None: the one
    ``RAY_ADDRESS`` names, else a new local one; a Ray already initialised in this process
    (tests, notebooks) is used as it is. ``workers``: actors, each holding one copy of the
    model (None: 1). ``gpus_per_worker``: GPUs each actor reserves (fractions share a GPU;
    the device is still chosen by the run's ``device`` option, ``auto`` picking CUDA where
    the actor sees one). ``cpus_per_worker``: CPUs each actor reserves, also its torch threads
    (None: 1). ``retries``: how many times a chunk whose actor died is retried (and how many
    times an actor is restarted). ``runtime_env``: Ray's, for a cluster this starts or joins
    (e.g. ``{"env_vars": {...}}``). ``worker_logs``: show the actors' stdout and stderr here
    (Ray prefixes each line with the actor's name); off by default, since every problem of an
    input is in its record.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = 1,
        gpus_per_worker: float = 0.0,
        *,
        cpus_per_worker: float | None = None,
        retries: int = 3,
        runtime_env: dict[str, Any] | None = None,
        worker_logs: bool = False,
    ) -> None:
        if importlib.util.find_spec("ray") is None:  # before any work; importing Ray takes ~1 s
            raise MissingExtra(INSTALL_HINT)
        workers = 1 if workers is None else workers
        if workers < 1:
            raise SetupError(f"--ray-workers must be at least 1, got {workers}")
        if not gpus_per_worker >= 0:
            raise SetupError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
        if cpus_per_worker is not None and not cpus_per_worker > 0:
            raise SetupError(f"CPUs per worker must be more than 0, got {cpus_per_worker}")
        if retries < 0:
            raise SetupError(f"retries must be 0 or more, got {retries}")
        where = address or os.environ.get("RAY_ADDRESS")
        problem = None if _ray_running() else _unreachable(where)
        if problem:  # else ray.init waits for it for minutes
            raise SetupError(
                f"--executor ray: no Ray cluster answers at {where} ({problem}); check "
                "--ray-address (HOST:6379, ray://HOST:10001 or auto) and that the cluster runs"
            )
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = 1.0 if cpus_per_worker is None else float(cpus_per_worker)
        self.retries = retries
        self.runtime_env = runtime_env
        self.worker_logs = worker_logs

    def execute(
        self, items: Sequence[InputItem], jobs: Sequence[Job], work: BatchWork
    ) -> Iterator[tuple[int, Records]]:
        """``(position, records)`` of each job, as its chunk completes. Closing the iterator
        early (or Ctrl-C) stops the dataset: its actors are killed, a chunk being written may
        leave whole files but no partial ones."""
        if not jobs:
            return
        ray = _import_ray()
        started = self._connect(ray)
        try:
            yield from self._stream(ray, jobs, work)
        finally:
            if started:
                ray.shutdown()
            # a killed actor cannot remove its temporary files; the run is over, so any left
            # by a process gone is stale (same rule as at the start of a run)
            remove_stale_temporaries(Path(work.options.out))

    # ------------------------------------------------------------------------------ inside
    def _connect(self, ray) -> bool:
        """Join or start the cluster; True if this call started (so must stop) Ray."""
        loud = debugging()
        if not loud:
            _quiet_ray_data()
        if ray.is_initialized():
            return False
        if not loud:  # else Ray's C++ core logs an error line for every actor it starts
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            with contextlib.nullcontext() if loud else _no_native_stderr():
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=self.worker_logs or loud,
                    logging_level=logging.INFO if loud else logging.ERROR,  # not its notes
                    runtime_env=self.runtime_env,
                )
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a new local Ray"
            raise SetupError(
                f"--executor ray: cannot start or join {where}: {_reason(error)}; check "
                "--ray-address (HOST:6379, ray://HOST:10001 or auto) and that the cluster runs"
            ) from None
        return True

    def _stream(self, ray, jobs: Sequence[Job], work: BatchWork) -> Iterator[tuple[int, Records]]:
        model, config = work.source
        source = ray.put((model, config, work.options))
        chunks = _chunks(jobs, work.options.batch_size)
        rows = [
            {"positions": [job.position for job in chunk], "jobs": pickle.dumps(chunk)}
            for chunk in chunks
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        dataset.context.max_errored_blocks = -1  # a chunk that fails for good: its inputs fail
        with warnings.catch_warnings():  # see the module doc on max_task_retries
            warnings.simplefilter("ignore", DeprecationWarning)
            explained = dataset.map_batches(
                _Explain,
                fn_constructor_args=(source,),
                batch_size=1,  # one chunk per call: a chunk is already a batch
                batch_format="numpy",
                # one chunk at a time per actor: when it dies, only the chunk it was working
                # on is retried (and charged a retry), not the ones queued behind it
                compute=ray.data.ActorPoolStrategy(
                    size=min(self.workers, len(rows)),  # an idle actor would only cost
                    max_tasks_in_flight_per_actor=1,
                ),
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker or None,
                max_restarts=-1,
                max_task_retries=self.retries,
            )
        pending = {job.position: job for job in jobs}
        batches = explained.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
        problem = None
        try:
            for batch in batches:
                for position, blob in zip(batch["position"], batch["records"], strict=True):
                    if pending.pop(int(position), None) is not None:  # never reported twice
                        yield int(position), pickle.loads(blob)
        except ray.exceptions.RayError as error:  # the dataset failed as a whole
            problem = f"not explained: the Ray run failed: {_reason(error)}"
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            del source
        if pending:  # their chunks failed even when retried
            tries = self.retries + 1
            problem = problem or (
                f"not explained: its batch failed {tries} time{'s' * (tries > 1)} on the Ray "
                "workers (a worker died or was killed)"
            )
            advice = "rerun with --skip-existing to explain the inputs left"
            for position, job in sorted(pending.items()):
                yield position, [failed_record(work.info, job, problem, advice)]


def _chunks(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Consecutive jobs of at least ``batch_size`` samples (the last one may have fewer), as
    the local executor fills a batch; the actor splits one further only where sizes differ."""
    chunks: list[list[Job]] = []
    chunk: list[Job] = []
    samples = 0
    for job in jobs:
        chunk.append(job)
        samples += max(1, len(job.outputs))
        if samples >= batch_size:
            chunks.append(chunk)
            chunk, samples = [], 0
    if chunk:
        chunks.append(chunk)
    return chunks


def _ray_running() -> bool:
    """Whether Ray is initialised in this process (then it is used as it is)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _unreachable(address: str | None, timeout: float = 5.0) -> str | None:
    """Why nothing accepts a connection at a ``[ray://]HOST:PORT`` address; None if something
    does, or for an address that is not of that form (``auto``, none)."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as error:
        return (error.strerror or str(error) or type(error).__name__).lower()


def _reason(error: BaseException) -> str:
    """The first line of a Ray error, without its colours."""
    text = _ANSI.sub("", str(error)).strip().splitlines()
    return error_reason(RuntimeError(text[0] if text else type(error).__name__), 200)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _no_native_stderr() -> Iterator[None]:
    """The process's stderr (file descriptor 2) closed to what Ray's C++ core prints while it
    starts: one line saying that it read RAY_BACKEND_LOG_LEVEL. Python's errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_ray_data() -> None:
    """No progress bars, execution banners or logs of Ray Data on our stderr (except with
    ``--debug``)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False
    # not the tracebacks of failed chunks either: their inputs' records say what happened
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


class _Explain:
    """One actor of the pool: the run's :class:`BatchWork`, built once, explains chunks."""

    def __init__(self, source) -> None:
        import ray
        import torch

        model, config, options = ray.get(source)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, math.floor(cpus)))
        self.work = BatchWork(model, config, options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        positions: list[int] = []
        records: list[bytes] = []
        for blob in batch["jobs"]:
            chunk: list[Job] = pickle.loads(blob)
            for job, found in zip(chunk, explain_chunk(chunk, self.work), strict=True):
                positions.append(job.position)
                records.append(pickle.dumps(found))
        return {
            "position": np.asarray(positions, dtype=np.int64),
            "records": np.asarray(records, dtype=object),
        }


def explain_chunk(chunk: Sequence[Job], work: BatchWork) -> list[Records]:
    """Decode, explain and write ``chunk``; per job, its records. Batches are formed as the
    local executor forms them (:class:`BatchFiller`)."""
    found: dict[int, Records] = {}
    filler: BatchFiller[int] = BatchFiller(work.options.batch_size)

    def explain(batch: list[tuple[int, Any]]) -> None:
        decoded = [(chunk[i], rows) for i, rows in batch]
        for (i, _), writings in zip(batch, work.explain(decoded), strict=True):
            found[i] = [write() for write in writings]

    for i, job in enumerate(chunk):
        rows, error = try_decode_input(job.item, work.preprocessing, work.options.max_pixels)
        if rows is None:
            found[i] = [make_record(work.info, job, error=error)]
            continue
        for batch in filler.add(i, rows):
            explain(batch)
    for batch in filler.rest():
        explain(batch)
    return [found[i] for i in range(len(chunk))]
