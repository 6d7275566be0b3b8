"""The local executor: decoding in worker processes, the engine in this process, files
written by a thread, so that the next images decode and the last batch's files are written
while the engine works.

Batches are formed by :class:`~lrp_cli.pipeline.batch.BatchFiller`, from the inputs that
loaded, so an input that fails to load never changes the batches (and so the bits) of the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from ..images import InputItem
from .batch import BatchFiller, BatchWork, Decoded
from .decoding import Decoder
from .records import Job, make_record

__all__ = ["LocalExecutor"]

Records = list[dict[str, Any]]


class LocalExecutor:
    """Runs the jobs of a run on this machine.

    ``decoder``: a :class:`Decoder` started early on the run's items (before the model was
    loaded); it is used if it decodes as the run needs, and closed either way.
    """

    def __init__(self, decoder: Decoder | None = None) -> None:
        self.decoder = decoder

    def execute(
        self, items: Sequence[InputItem], jobs: Sequence[Job], work: BatchWork
    ) -> Iterator[tuple[int, Records]]:
        """``(position, records)`` of each job, in job order. Closing the iterator early (or
        Ctrl-C) stops the workers; a file being written is finished, queued ones dropped."""
        decoder = self._decoder(items, [job.position for job in jobs], work)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrp-writer")
        try:
            yield from _in_order(jobs, decoder, work, writer)
        finally:
            decoder.close()
            writer.shutdown(wait=True, cancel_futures=True)

    def _decoder(self, items: Sequence[InputItem], positions: list[int], work: BatchWork):
        early, self.decoder = self.decoder, None
        options = work.options
        if early is not None:
            same = (early.preprocessing, early.max_pixels, early.items)
            if same == (work.preprocessing, options.max_pixels, list(items)):
                early.only(positions)
                return early
            early.close()
        return Decoder(
            items,
            work.preprocessing,
            max_pixels=options.max_pixels,
            workers=options.workers,
            indices=positions,
        )


class _Ticket:
    """A job on its way: its records, once known, or the writes that will give them."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.records: Records | None = None
        self.writing: list[Future] | None = None

    def settled(self, wait: bool) -> bool:
        if self.writing is not None and (wait or all(f.done() for f in self.writing)):
            self.records = [f.result() for f in self.writing]
            self.writing = None
        return self.records is not None


def _in_order(
    jobs: Sequence[Job], decoder: Decoder, work: BatchWork, writer: ThreadPoolExecutor
) -> Iterator[tuple[int, Records]]:
    """Decode, batch, explain and write; yield each job's records in job order."""
    waiting: deque[_Ticket] = deque()  # in job order, not yet yielded
    filler: BatchFiller[_Ticket] = BatchFiller(work.options.batch_size)
    behind: list[Future] = []  # the last batch's writes: at most one batch is behind

    def explain(batch: list[tuple[_Ticket, Any]]) -> None:
        nonlocal behind
        decoded: list[Decoded] = [(ticket.job, rows) for ticket, rows in batch]
        writings = work.explain(decoded)  # while the last batch's files are written
        wait(behind)
        behind = []
        for (ticket, _), writes in zip(batch, writings, strict=True):
            ticket.writing = [writer.submit(write) for write in writes]
            behind += ticket.writing

    def ready(final: bool) -> Iterator[tuple[int, Records]]:
        while waiting and waiting[0].settled(wait=final):
            ticket = waiting.popleft()
            yield ticket.job.position, ticket.records

    stream = iter(decoder)
    for job in jobs:
        ticket = _Ticket(job)
        waiting.append(ticket)
        position, rows, error = next(stream)
        assert position == job.position, "the decoder yields the jobs in order"
        if rows is None:
            ticket.records = [make_record(work.info, job, error=error)]
        else:
            for batch in filler.add(ticket, rows):
                explain(batch)
        yield from ready(final=False)
    for batch in filler.rest():
        explain(batch)
    yield from ready(final=True)
