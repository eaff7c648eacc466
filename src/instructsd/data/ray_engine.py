"""Ray as an engine: a mixture's chunks as Ray tasks, on one machine or a cluster (issue 19).

The engine only schedules. Each chunk is one Ray task that calls
:func:`instructsd.data.write.write_chunk` -- the function the local engine calls -- so the
chunk files, and everything after them (resume, ``data join``, the card), are the local
engine's. A row depends only on the seed and its item index (:mod:`instructsd.data.rows`),
so the dataset is identical to a local build whatever node makes which chunk.

Retries: a chunk whose worker dies (node lost, process killed, out of memory) is run again,
up to :data:`MAX_RETRIES` times; a chunk is written under a temporary name and renamed into
place, so a retried or cancelled chunk never leaves half a chunk. A Python exception in a
chunk (a bad teacher, say) is not retried -- it would fail again -- and stops the build; the
chunks already written stay, so the rerun resumes.

Why Ray Core tasks and not a Ray Data map stage: a chunk's output is files on disk, not a block
that flows on, so Ray Data's streaming buys nothing here; and Ray Data 2.60 runs map tasks with
unbounded retries, its per-stage ``max_retries`` being deprecated (removal in 2.64). Batch
editing, whose outputs do flow back, is a Ray Data stage (:mod:`instructsd.edit.ray_batch`).

Ray is optional (``pip install instructsd[ray]``): nothing here imports it until it is used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

from instructsd.errors import InstructSDError

ENGINES = ("local", "ray")
MAX_RETRIES = 3  # bounded (Ray Data's map stages retry forever): a chunk that kills its worker each time ends the build
INSTALL_HINT = "pip install instructsd[ray]"


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or an error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 -- the extra's `data` part (pandas, pyarrow)
    except ImportError as err:
        raise InstructSDError(f"--engine ray needs Ray Data ({err.name} is missing): {INSTALL_HINT}") from None
    return ray


def check_engine(engine: str, address: str | None, num_proc: int = 1) -> None:
    """Before any work: a known engine, ``address`` only with Ray, and Ray importable."""
    if engine not in ENGINES:
        raise InstructSDError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise InstructSDError("--address names a Ray cluster; add --engine ray")
    if address is not None and num_proc != 1:
        raise InstructSDError("--num-proc sets the CPUs of a local Ray instance; with --address the cluster's "
                              "nodes decide, so drop --num-proc")
    if engine == "ray":
        require_ray()


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, progress: bool = True) -> Iterator[ModuleType]:
    """Connect to Ray for the duration of a build or a batch of edits.

    A session that is already open (a notebook's, the tests') is used as it is and left open.
    Otherwise ``address`` (``auto``, ``ray://head:10001``, ``head:6379``) joins an existing
    cluster, whose nodes decide the CPUs and GPUs; without it a local instance with
    ``num_cpus`` CPUs (default: all) is started, and shut down at the end.
    """
    ray = require_ray()
    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise InstructSDError(f"cannot start or reach {where}: {str(err).splitlines()[0]}; "
                                  "check --address (e.g. auto, or ray://HEAD:10001)") from err
    context = ray.data.DataContext.get_current()
    kept = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = False  # instructsd draws its own bar, one tick per finished item
    context.print_on_execution_start = progress
    try:
        yield ray
    finally:
        context.enable_progress_bars, context.print_on_execution_start = kept  # a caller's session is theirs
        if owned:
            ray.shutdown()


def write_chunks_on_ray(
    write: Callable[..., None],
    plan,
    chunks: Sequence[int],
    parts: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> Iterator[int]:
    """Run ``write(plan, c, parts)`` for every chunk ``c`` as a Ray task; yield each finished ``c``.

    ``parts`` must be on storage every node sees at the same path (a shared filesystem), as
    must the mixture's source folders. One chunk is one task on one CPU; at most two per CPU
    of the cluster are queued at a time, so a million-chunk build does not queue a million tasks.
    """
    if not chunks:
        return
    with ray_session(address, num_cpus, progress=progress) as ray:
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_write_chunk)
        plan_ref = ray.put(plan)  # one copy in the object store, not one per task
        window = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
        todo, pending = iter(chunks), {}

        def submit() -> None:
            c = next(todo, None)
            if c is not None:
                pending[task.remote(write, plan_ref, c, str(parts))] = c

        for _ in range(window):
            submit()
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                c = pending.pop(ref)
                _result(ray, ref, c)
                yield c
                submit()
        finally:  # an error or an interrupt: stop the rest; a chunk cut short is made again on resume
            for ref in pending:
                ray.cancel(ref, force=True)
            if pending:  # let them go before a rerun can start (write_chunk tolerates one that doesn't)
                ray.wait(list(pending), num_returns=len(pending), timeout=10)


def _write_chunk(write: Callable[..., None], plan, c: int, parts: str) -> None:
    """One chunk, in a Ray worker (a process that builds chunks one after another)."""
    import datasets

    datasets.disable_progress_bars()  # no bars from inside workers
    write(plan, c, Path(parts))


def _result(ray: ModuleType, ref, c: int) -> None:
    """Raise a chunk's failure as the user's error (the finished chunks stay for the rerun)."""
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, InstructSDError):
            raise err.cause from None
        raise
    except ray.exceptions.RayError as err:  # the worker died MAX_RETRIES + 1 times
        raise InstructSDError(f"chunk {c} failed {MAX_RETRIES + 1} times ({type(err).__name__}: "
                              f"{str(err).splitlines()[0]}); the finished chunks are kept, so running the "
                              "same command again resumes -- give the workers more memory first if they ran out") from err
