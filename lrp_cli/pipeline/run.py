"""One explain run, whatever executes it:

    inputs -> select (shard, skip-existing) -> decode -> explain -> write outputs -> records

:class:`ExplainRun` does the set-up once (so usage problems are found before any work), plans
the outputs, hands the jobs to an executor (local by default, or Ray), and reports every
input's records in input order; the counting, the records and the exit status do not depend
on the executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..images import InputItem, InputProblem
from ..outputs import OutputError, make_folder
from .batch import BatchWork
from .local import LocalExecutor
from .options import ExplainOptions, Summary
from .plan import plan_run, remove_stale_temporaries
from .prepare import SetupError
from .records import Job, refused_record

if TYPE_CHECKING:
    from ..config import RuleConfig
    from ..models import LoadedModel

__all__ = ["ExplainRun", "Executor"]

Records = list[dict[str, Any]]


class Executor(Protocol):
    def execute(
        self, items: Sequence[InputItem], jobs: Sequence[Job], work: BatchWork
    ) -> Iterator[tuple[int, Records]]:
        """``(position, records)`` once for each job, in any order; closing it stops the work."""
        ...


class ExplainRun:
    """Explains inputs and writes heatmaps, relevance arrays and records.

    Construction does all the set-up that can fail for a usage reason (options, device,
    precision, target, rules, output folder) and raises :class:`SetupError` or the engine's
    and model's errors; then :meth:`run` never raises for an input's problem: each becomes a
    failed record.
    """

    def __init__(self, model: LoadedModel, config: RuleConfig, options: ExplainOptions) -> None:
        self.model, self.config, self.options = model, config, options
        self.work = BatchWork(model, config, options)
        self.warnings = self.work.warnings
        self.preprocessing = self.work.preprocessing
        self.out_dir = Path(options.out)
        try:
            make_folder(self.out_dir, hint="choose another one with --out")
        except OutputError as error:
            raise SetupError(str(error)) from None
        remove_stale_temporaries(self.out_dir)

    def run(
        self,
        items: Sequence[InputItem],
        on_records: Callable[[Records], bool | None] | None = None,
        *,
        refused: Sequence[InputProblem] = (),
        executor: Executor | None = None,
    ) -> Summary:
        """Explain ``items``; ``on_records(records)`` is called once per input, in input order.

        Raises :class:`SetupError` only if the executor cannot start (a Ray cluster that
        cannot be reached), before any input is explained.

        ``refused``: inputs refused while they were collected (see
        :func:`lrp_cli.pipeline.inputs.select_inputs`); each is reported first, as a failed
        record. ``on_records`` returning False stops the run (the reader of the records went
        away). Ctrl-C stops it too: finished outputs stay, the summary says it was interrupted.
        """
        summary = Summary(inputs=len(items))
        info = self.work.info

        def report(records: Records) -> bool:
            summary.count(records)
            return on_records is None or on_records(records) is not False

        try:
            if not all(report([refused_record(info, p)]) for p in refused):
                summary.stopped = True
                return summary
            plan = plan_run(items, self.out_dir, self.options.existing, info)
            results = (executor or LocalExecutor()).execute(items, plan.jobs, self.work)
            try:
                for records in _in_input_order(len(items), plan.settled, results):
                    if not report(records):
                        summary.stopped = True
                        break
            finally:
                results.close()
        except KeyboardInterrupt:
            summary.interrupted = True
        return summary


def _in_input_order(
    count: int, settled: Mapping[int, Records], results: Iterator[tuple[int, Records]]
) -> Iterator[Records]:
    """The records of positions 0 .. count - 1, from ``settled`` or as the executor gives them."""
    early: dict[int, Records] = {}
    for position in range(count):
        if position in settled:
            yield settled[position]
            continue
        while position not in early:
            done, records = next(results)
            early[done] = records
        yield early.pop(position)
