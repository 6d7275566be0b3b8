"""Decoding inputs ahead of the explainer, in worker processes, in input order.

Why not torch's DataLoader: its workers need torch, so they can start only once torch is
imported (2.1-2.5 s on the 2-vCPU test machine), a dead worker ends the whole run, and tensors
travel through shared-memory files. These workers need Pillow and numpy only, a dead one costs
one input (the one waited for; with one worker, the one it was decoding), not the run, and
arrays come back through a pipe. ``lrp explain`` starts them before it imports torch: on the
test machine 100-113 of 200 images were decoded during the import, but the import itself slowed
by 0.4 s meanwhile (two vCPUs), so the gain there is nil; where a core is free it saves the
decoding of up to one look-ahead.

At most ``lookahead`` inputs are decoded and not yet taken, so memory stays bounded however
many inputs there are. Importing this module does not import torch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ..images import DEFAULT_MAX_PIXELS, ImageError, InputItem, try_decode_input

__all__ = ["Decoder", "LOOKAHEAD_BYTES", "decode_all", "default_workers"]

#: Decoded inputs held ahead of the consumer: 128 MiB, about 220 images at 224 x 224.
LOOKAHEAD_BYTES = 128 << 20

Decoded = tuple[int, "np.ndarray | None", "str | None"]  # item index, (n, C, H, W) or error


def default_workers() -> int:
    """Up to 4 decoding processes, one fewer than the cores (the explainer needs one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) - 1))


class Decoder:
    """Decoded inputs of ``items`` in order, as ``(index, array, error)``; see the module doc.

    ``workers`` processes decode (None: :func:`default_workers`; 0: decode in the caller's
    thread, as for a single input, which is faster than starting a process). Decoding starts at
    construction, of the items at ``indices`` (default: all); :meth:`only` narrows that later
    (a resumed run skips the inputs already done). Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        items: Sequence[InputItem],
        preprocessing,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        workers: int | None = None,
        lookahead: int | None = None,
        indices: Iterable[int] | None = None,
    ) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        count = default_workers() if workers is None else workers
        self.workers = min(count, len(self.items)) if len(self.items) > 1 else 0
        per_input = 4 * 3 * int(preprocessing.input_size) ** 2
        self.lookahead = lookahead or max(8, LOOKAHEAD_BYTES // per_input)
        self._todo: deque[int] = deque(range(len(self.items)) if indices is None else indices)
        self._running: deque[tuple[int, Future]] = deque()
        self._pool: ProcessPoolExecutor | None = None
        if self.workers:
            self._pool = self._new_pool()
            self._fill()

    # ------------------------------------------------------------------------------ public
    def only(self, indices: Iterable[int]) -> None:
        """Decode only these items from now on; queued decodes of the others are dropped."""
        wanted = set(indices)
        for index, future in self._running:
            if index not in wanted:
                future.cancel()
        self._running = deque((i, f) for i, f in self._running if i in wanted)
        self._todo = deque(i for i in self._todo if i in wanted)
        self._fill()

    def __iter__(self) -> Iterator[Decoded]:
        while self._running or self._todo:
            if self._pool is None:
                index = self._todo.popleft()
                yield (index, *self._decode(index))
                continue
            index, future = self._running.popleft()
            try:
                array, error = future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory, crashed decoder)
                array, error = None, self._crashed(index)
            self._fill()
            yield index, array, error

    def close(self) -> None:
        """Stop the workers; decodes not yet started are dropped, and a worker still decoding
        is terminated rather than waited for (Ctrl-C must not hang on a slow or stuck file)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            busy = not all(future.done() for _, future in self._running)
            processes = list((getattr(pool, "_processes", None) or {}).values()) if busy else []
            pool.shutdown(wait=not busy, cancel_futures=True)
            for process in processes:  # no public API for this before Python 3.14
                process.terminate()
            for process in processes:
                process.join(5)
        self._running.clear()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ inside
    def _decode(self, index: int) -> tuple[np.ndarray | None, str | None]:
        return try_decode_input(self.items[index], self.preprocessing, self.max_pixels)

    def _new_pool(self) -> ProcessPoolExecutor:
        # fork: cheap, and torch-free when started before torch is imported
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
        )

    def _fill(self) -> None:
        while self._pool is not None and self._todo and len(self._running) < self.lookahead:
            index = self._todo.popleft()
            item = self.items[index]
            future = self._pool.submit(try_decode_input, item, self.preprocessing, self.max_pixels)
            self._running.append((index, future))

    def _crashed(self, index: int) -> str:
        """The item waited for fails; a fresh pool decodes the others again."""
        self._todo.extendleft(reversed([i for i, _ in self._running]))
        self._running.clear()
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        problem = "the process decoding it died (killed, out of memory or a decoder crash)"
        return str(ImageError(self.items[index].path, problem, "check the file on its own"))


def decode_all(
    items: Sequence[InputItem],
    preprocessing,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> tuple[list[tuple[InputItem, np.ndarray]], list[str]]:
    """Every input decoded, in order, for analyses that hold them all (evaluate, compare):
    ``(item, (n, C, H, W) array)`` pairs, and one message per input that failed. Decoding
    checks each input against the model's input shape, so the arrays stack."""
    decoded: list[tuple[InputItem, np.ndarray]] = []
    errors: list[str] = []
    with Decoder(items, preprocessing, max_pixels=max_pixels, workers=workers) as decoder:
        for index, array, error in decoder:
            if array is None:
                errors.append(str(error))
            else:
                decoded.append((items[index], array))
    return decoded, errors


def _start_worker(parent: int) -> None:
    """Ignore Ctrl-C (the parent stops the workers, so no traceback per worker) and exit when
    the parent is gone: a killed parent never closes the pipe a worker waits on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
