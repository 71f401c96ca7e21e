"""Running one block, the same way on every engine: skip it when done, record it either way.

A block is done when its done record is written, after its function returned; its failure is
recorded with the traceback before daisy (or Dask) hears of it, so that the run can name the
block and the error whatever engine ran it. While a block runs, the worker tells its
supervisor which block it holds (:func:`~blockbuster.run.launch.write_worker_state`), so a
worker that dies or freezes inside it is named too.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

import numpy as np

from blockbuster.run.launch import write_worker_state
from blockbuster.run.records import TaskRecords
from blockbuster.run.task import Block, BlockFunction, Task, UpstreamNotDone

logger = logging.getLogger(__name__)


def process_block(
    task: Task, fn: BlockFunction, records: TaskRecords, block: Block
) -> dict[str, Any] | None:
    """Run ``fn`` on ``block`` unless it is done; return its record (None: it was done).

    A block whose function raised :class:`~blockbuster.run.task.UpstreamNotDone` returns
    None with no record at all: the driver's next pass runs it again.

    Raises
    ------
    Exception
        Whatever ``fn`` raised, after recording it as a failed attempt.
    """
    units = task.units(block)
    if task.unit_records:
        # the block function records each unit; the block is done when they all are
        records.index.refresh()
        if all(records.is_done(u, refresh=False) for u in units):
            return None
        return _process_units(task, fn, records, block, units)
    if records.is_done(block.key):
        return None  # done by an attempt whose completion never reached the server
    write_worker_state({"key": block.key, "tiles": units})
    started, start = time.time(), time.perf_counter()
    try:
        info = _plain_info(fn(block))
    except UpstreamNotDone as e:
        _left_undone(task, block, e)
        return None
    except Exception:
        records.failed(block.key, traceback.format_exc(), tiles=units)
        raise
    finally:
        write_worker_state(None)
    record = {"tiles": units, **info}
    records.done(block.key, started, time.perf_counter() - start, **record)
    return record


def _process_units(
    task: Task, fn: BlockFunction, records: TaskRecords, block: Block, units: list[int]
) -> dict[str, Any] | None:
    write_worker_state({"key": block.key, "tiles": units})
    try:
        fn(block)
    except UpstreamNotDone as e:
        _left_undone(task, block, e)
        return None
    except Exception as e:
        if not getattr(e, "recorded", False):  # its units' failures are not recorded yet
            records.failed(block.key, traceback.format_exc(), tiles=units)
        raise
    finally:
        write_worker_state(None)
    return None


def _left_undone(task: Task, block: Block, error: UpstreamNotDone) -> None:
    logger.warning(
        "%s block %d left undone for the next pass (no record, no failure): %s",
        task.name,
        block.key,
        error,
    )


#: keys of a done record that blockbuster writes itself
RESERVED = ("tile", "tiles", "host", "start", "seconds")


def _plain_info(info: Any) -> dict[str, Any]:
    """What a block function returned, as JSON values (numpy scalars and arrays become
    numbers and lists).

    Raises
    ------
    TypeError, ValueError
        If it is not a dict of JSON-serialisable values, or uses a key blockbuster keeps.
    """
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise TypeError(
            f"the block function returned {type(info).__name__}; return None or a dict of "
            "JSON values (kept in the block's record)"
        )
    clash = sorted(k for k in info if k in RESERVED or not isinstance(k, str))
    if clash:
        raise ValueError(
            f"the block function returned the keys {clash}: {', '.join(RESERVED)} are the "
            "record's own, and keys must be strings; rename them"
        )

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not a JSON value")

    out: dict[str, Any] = json.loads(json.dumps(info, default=plain))
    return out


def record_failure(task: Task, records: TaskRecords, block: Block, text: str) -> None:
    """Record a failed attempt at ``block`` that its function could not report (a timeout)."""
    records.failed(block.key, text, tiles=task.units(block))


def serve_daisy(task: Task, records: TaskRecords, fn: BlockFunction) -> int:
    """Take blocks of ``task`` from its daisy server until it has none; return how many
    failed."""
    import daisy

    client = daisy.Client()
    failed = 0
    while True:
        block_failed = False
        try:
            with client.acquire_block() as handed:
                if handed is None:
                    break
                block = task.block_of(handed.read_roi, handed.write_roi)
                try:
                    process_block(task, fn, records, block)
                except Exception:
                    block_failed = True
                    raise
        except Exception:
            if not block_failed:
                raise  # the server is gone or daisy failed: this worker's run is over
            # daisy's acquire_block logged the traceback and reported the block failed (the
            # server retries it or counts it failed); keep serving
            failed += 1
    return failed
