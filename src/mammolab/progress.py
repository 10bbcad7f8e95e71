"""Progress bars and parallel maps shared by every long loop.

``parallel_map`` runs a picklable function over items in worker processes (or inline for
``workers <= 1``), shows a Rich progress bar, and never lets one bad item stop the run: a
:class:`MammoLabError` raised for an item is collected as ``(item, message)`` and reported by the
caller at the end. An :class:`~mammolab.errors.OutputError` (the output folder cannot be written)
stops the whole run: skipping every item one by one would only hide it. Any other exception is a
bug and propagates.

``workers``: ``None`` means every core this process may use; a positive number is capped at that
(more processes than cores only add memory and switching); 0 or a negative number is an error
(:func:`resolve_workers`).

Workers start from a clean server process (``forkserver`` where the platform has it, else
``spawn``), never by forking the caller: a caller that has already used OpenCV's or OpenMP's
thread pool (a notebook that trained a model, a test session, ``mammolab run``) would hand each
forked child a pool whose locks belong to threads that do not exist there, and the child hangs in
its first ``cv2`` call.

Set ``MAMMOLAB_QUIET=1`` (tests, CI) to silence bars.
"""

from __future__ import annotations

import multiprocessing
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mammolab.errors import MammoLabError, OutputError

T = TypeVar("T")
R = TypeVar("R")

console = Console(stderr=True)


def quiet() -> bool:
    """True when progress output is switched off (``MAMMOLAB_QUIET=1``)."""
    return os.environ.get("MAMMOLAB_QUIET", "") not in ("", "0", "false", "no")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, option: str = "--workers") -> int:
    """The number of worker processes to use: ``None`` -> all cores, ``N`` -> at most the cores.

    0 and negative numbers are refused (they used to mean "all cores" silently, which hid typos such
    as ``-j -4``); asking for more than the cores is capped, since extra processes only cost memory.
    """
    cores = default_workers()
    if workers is None:
        return cores
    try:
        if isinstance(workers, bool):
            raise TypeError
        workers = operator.index(workers)
    except TypeError:
        raise MammoLabError(f"{option}: expected a whole number of worker processes, got {workers!r}") from None
    if workers < 1:
        raise MammoLabError(f"{option}: expected 1 or more worker processes (or leave it out for all "
                            f"{cores} cores), got {workers}")
    return min(workers, cores)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet(), transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (silent when quiet)."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _call(fn: Callable[[T], R], item: T) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except OutputError:
        raise  # the run cannot go on: pickled back to the parent and raised there
    except MammoLabError as exc:
        return False, str(exc)


def _pool_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: from a clean forkserver (Linux), else spawned (macOS, Windows)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None,
                 description: str = "working") -> tuple[list[R | None], list[tuple[int, str]]]:
    """Apply ``fn`` to each item; return results in input order and ``(index, error)`` for failures.

    Failed items have ``None`` as their result. Work is submitted in a bounded window so memory
    stays flat on large inputs (full-size mammograms are ~30 MB each in flight).
    """
    workers = resolve_workers(workers)
    results: list[R | None] = [None] * len(items)
    errors: list[tuple[int, str]] = []
    with make_progress() as progress:
        task = progress.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                ok, value = _call(fn, item)
                if ok:
                    results[i] = value
                else:
                    errors.append((i, value))
                progress.advance(task)
            return results, errors
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            pending: dict[Any, int] = {}
            it = iter(enumerate(items))
            window = workers * 4

            def submit_next() -> bool:
                try:
                    i, item = next(it)
                except StopIteration:
                    return False
                pending[pool.submit(_call, fn, item)] = i
                return True

            for _ in range(window):
                if not submit_next():
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        ok, value = fut.result()
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)  # start nothing more
                        raise
                    if ok:
                        results[i] = value
                    else:
                        errors.append((i, value))
                    progress.advance(task)
                    submit_next()
    errors.sort()
    return results, errors
