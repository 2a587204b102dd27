"""Server-side batching with TF Serving's semantics: merge concurrent requests, bounded queue.

Each task (one request's inputs) joins the open batch; a batch is closed when it reaches
`max_batch_size` or its oldest task has waited `batch_timeout_micros`, and batch threads run the
closed batches. At most `max_enqueued_batches` batches wait; a task that would need another one
is refused at once with UNAVAILABLE, so a burst cannot grow memory or latency without bound.
A task whose deadline passes (or whose caller stopped waiting) before its batch runs is dropped
from the batch with DEADLINE_EXCEEDED: nobody waits for its answer, so it costs no computation.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future

import grpc
import numpy as np

from serving.server.config import BatchingParameters
from serving.server.errors import ServingError, deadline_exceeded, failed_precondition, invalid_argument, unavailable

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def task_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The batch size of one request: the shared 0th dimension of all its inputs."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        sizes.add(int(array.shape[0]))
    if len(sizes) != 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def _detached(err: Exception) -> Exception:
    """The error to hand the waiting requests: same type and message, holding no frame of the failed run.

    A raised error's traceback keeps the frames it passed through, and their locals keep the merged
    inputs; set on the futures, it would also be reachable from those frames: a reference cycle that
    only a full garbage collection frees, so a few failing large batches would pin hundreds of MB.
    """
    for raised in (err, err.__cause__, err.__context__):
        if raised is not None:
            traceback.clear_frames(raised.__traceback__)
    if isinstance(err, ServingError):
        return ServingError(err.code, err.message)
    err.__cause__ = err.__context__ = None
    return err.with_traceback(None)


def _check_batched_outputs(outputs: Mapping[str, np.ndarray], size: int) -> None:
    """Refuse, as TF Serving's batching session does, outputs that cannot be split back into the requests.

    Raises:
        ServingError: FAILED_PRECONDITION for a scalar output or one whose 0th dimension is not the batch's size.
    """
    for array in outputs.values():
        if np.ndim(array) == 0:
            raise failed_precondition("Batched output tensor has 0 dimensions")
        if np.shape(array)[0] != size:
            raise failed_precondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                "input tensors"
            )


class _Task:
    __slots__ = ("inputs", "size", "future", "enqueued", "deadline")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int, deadline: float | None):
        self.inputs = inputs
        self.size = size
        self.future: Future = Future()
        self.enqueued = time.monotonic()
        self.deadline = deadline


class _Batch:
    __slots__ = ("tasks", "size", "opened")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.opened = time.monotonic()


class BatchScheduler:
    """Batches tasks for one servable signature and runs them on `params.threads` threads."""

    def __init__(self, run: RunFn, params: BatchingParameters, name: str = "batch"):
        self._run = run
        self._params = params
        self._max = params.max_batch_size
        self._timeout = params.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._closed: deque[_Batch] = deque()
        self._open: _Batch | None = None
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(params.threads)
        ]
        for t in self._threads:
            t.start()

    def schedule(self, inputs: Mapping[str, np.ndarray], deadline: float | None = None) -> Future:
        """Queue one request's inputs; the future resolves to its outputs or a ServingError.

        Args:
            inputs: one request's input arrays.
            deadline: `time.monotonic()` after which the answer is of no use; a task still queued then is
                dropped, and cancelling the future drops it as well.
        """
        size = task_size(inputs)
        if size > self._max:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {self._max}")
        if deadline is not None and deadline <= time.monotonic():
            raise deadline_exceeded()
        task = _Task(inputs, size, deadline)
        with self._cond:
            if self._stopping:
                raise unavailable("The batch scheduler is shutting down")
            if self._open is None or self._open.size + size > self._max:
                if len(self._closed) + (self._open is not None) >= self._params.max_enqueued_batches:
                    raise unavailable("The batch scheduling queue to which this task was submitted is full")
                if self._open is not None:
                    self._closed.append(self._open)
                self._open = _Batch()
            self._open.tasks.append(task)
            self._open.size += size
            if self._open.size >= self._max:
                self._closed.append(self._open)
                self._open = None
            self._cond.notify()
        return task.future

    def _next_batch(self) -> _Batch | None:
        with self._cond:
            while True:
                if self._closed:
                    return self._closed.popleft()
                if self._open is not None:
                    wait = self._open.opened + self._timeout - time.monotonic()
                    if wait <= 0 or self._stopping:
                        batch, self._open = self._open, None
                        return batch
                    self._cond.wait(wait)
                    continue
                if self._stopping:
                    return None
                self._cond.wait()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._process(batch)
            except Exception as err:  # noqa: BLE001 - a batch thread must outlive any one batch
                log.exception("batch of %d tasks failed", len(batch.tasks))
                failure = ServingError(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
                for t in batch.tasks:
                    if not t.future.done():
                        t.future.set_exception(failure)

    def _process(self, batch: _Batch) -> None:
        now = time.monotonic()
        live = []
        for t in batch.tasks:
            # Marks the future running, so it can no longer be cancelled; False: it already was.
            if not t.future.set_running_or_notify_cancel():
                continue
            if t.deadline is not None and t.deadline <= now:
                t.future.set_exception(deadline_exceeded())
                continue
            live.append(t)
        dropped = len(batch.tasks) - len(live)
        if dropped:
            log.debug("batch of %d tasks: %d dropped, past their deadline", len(batch.tasks), dropped)
        if live:
            self._run_tasks(live)

    def _run_tasks(self, tasks: list[_Task]) -> None:
        """Run `tasks` as one merged batch and resolve their futures.

        When the merged run is refused with INVALID_ARGUMENT (one request's corrupt photo), the tasks
        are split in halves and each half is run again, down to the request at fault: only that
        request fails. A run that fails does so while decoding, before the network; the halves that
        succeed keep their batching, so the good requests cost about log2(n) runs, not n single ones.
        """
        failure: Exception | None = None
        try:
            if len(tasks) == 1:
                merged = tasks[0].inputs
            else:
                merged = {k: np.concatenate([t.inputs[k] for t in tasks], axis=0) for k in tasks[0].inputs}
            outputs = self._run(merged)
            _check_batched_outputs(outputs, sum(t.size for t in tasks))
        except ServingError as err:
            failure = _detached(err)
        except Exception as err:  # noqa: BLE001 - every waiting request must get an answer
            log.exception("batch of %d failed", sum(t.size for t in tasks))
            failure = _detached(err)
        if failure is None:
            start = 0
            for t in tasks:
                t.future.set_result({k: v[start : start + t.size] for k, v in outputs.items()})
                start += t.size
        elif len(tasks) > 1 and isinstance(failure, ServingError) and failure.code == grpc.StatusCode.INVALID_ARGUMENT:
            # Outside the except clause, so a half's failure is not chained to this one's; the merged copy goes first.
            merged = None
            half = len(tasks) // 2
            self._run_tasks(tasks[:half])
            self._run_tasks(tasks[half:])
        else:
            for t in tasks:
                t.future.set_exception(failure)

    def stop(self) -> None:
        """Run what is queued, then stop the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=60)
