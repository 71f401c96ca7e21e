"""A live status page of a run, served from a daemon thread while the driver runs.

Pages:

``/``
    The run as a dashboard: its input, output and main parameters; per task the units
    (tiles, or a user task's blocks) done, skipped, running, failed and pending, with elapsed
    time, rate and ETA (or which upstream task it waits for); the running tiles with the
    worker (host and process) running each; the failed ones, each linking to its traceback;
    and, for a ``tile_process`` run, the block map with a legend of the same counts. A
    script refreshes it every few seconds (``/panel.html``, and the map by reloading
    ``/block_map.png``). When the run ends the page shows its final state for as long as the
    driver's process lives; :func:`write_status_page` writes a self-contained copy of it.
``/status.json``
    The same, as data (see :func:`status_counts`), read from the record files on every
    request (one directory listing per task, and only the bytes the logs gained).
``/panel.html``
    The page's changing part, rendered from the same data.
``/traceback/<task>/<unit>``
    The traceback of a failed unit's last attempt, as text.
``/block_map.png``
    The block map (see :class:`blockbuster.ui.report.BlockMap`), redrawn at most every couple
    of seconds however many browsers ask.

Only the standard library serves it; it binds to ``127.0.0.1`` unless told otherwise, so it
is private to the machine (reach it from elsewhere with an SSH tunnel).
"""

from __future__ import annotations

import base64
import html
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from blockbuster.run.events import (
    Event,
    Progress,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    TaskInfo,
)
from blockbuster.run.records import RecordScanner, record_tiles
from blockbuster.run.rundir import RunDir
from blockbuster.ui.progress import format_eta
from blockbuster.ui.status import run_tasks_of

__all__ = [
    "StageClock",
    "StatusPageObserver",
    "StatusServer",
    "render_page",
    "run_parameters",
    "start_status_server",
    "status_counts",
    "write_status_page",
]

MAX_FAILED_LISTED = 50
MAX_RUNNING_LISTED = 50


class StageClock:
    """Elapsed time, rate and ETA per task, from the run's events (or from when it was made).

    A task's clock starts with the stage that runs it (:class:`StageStarted`; without events,
    when the clock was made) and stops when all its units are done. Its rate counts the units
    done since its clock started (a resumed run's earlier units are not), its ETA is what is
    left at that rate; a task whose upstream tasks are unfinished waits for them (its pace is
    theirs: it has no ETA of its own), as the terminal progress says.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.ended: float | None = None
        self.task_start: dict[str, float] = {}
        self.initial: dict[str, int] = {}
        self.finished_at: dict[str, float] = {}
        self.staged = False  # whether a StageStarted event came (else every task runs)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            now = self.clock()
            if isinstance(event, RunStarted):
                self.started, self.ended = now, None
            elif isinstance(event, StageStarted):
                self.staged = True
                for info in event.tasks:
                    self.task_start[info.name] = now
                    self.initial.pop(info.name, None)
                    self.finished_at.pop(info.name, None)
            elif isinstance(event, (StageFinished, RunFinished)):
                if isinstance(event, RunFinished):
                    self.ended = now
            elif isinstance(event, Progress) and event.task in self.task_start:
                # the first look of a stage: what was done before it does not count
                self.initial.setdefault(event.task, event.counts.num_done)

    def timing(
        self, tasks: Sequence[TaskInfo], states: dict[str, dict[str, int]]
    ) -> dict[str, dict[str, Any]]:
        """Per task: ``{"elapsed", "rate", "eta"}`` (seconds, units per second, seconds; None
        where not known), ``"waiting"`` (unfinished upstream task names) and ``"state"``
        (``"not started"``, ``"running"``, ``"waiting"``, ``"finished"``)."""
        with self._lock:
            now = self.ended if self.ended is not None else self.clock()
            totals = {t.name: t.total for t in tasks}

            def units(name: str) -> int:
                s = states.get(name, {})
                return int(s.get("done", 0)) + int(s.get("skipped", 0))

            out: dict[str, dict[str, Any]] = {}
            for info in tasks:
                name, done = info.name, units(info.name)
                start = self.task_start.get(name, None if self.staged else self.started)
                waiting = [u for u in info.upstream if u in totals and units(u) < totals[u]]
                row: dict[str, Any] = {"elapsed": None, "rate": None, "eta": None}
                row["waiting"] = waiting
                if done >= info.total and (start is not None or not self.staged):
                    self.finished_at.setdefault(name, now)
                if start is None:
                    row["state"] = "finished" if done >= info.total else "not started"
                    out[name] = row
                    continue
                initial = self.initial.setdefault(name, done if done < info.total else 0)
                end = self.finished_at.get(name, now)
                elapsed = max(end - start, 0.0)
                new = done - initial
                row["elapsed"] = elapsed
                row["rate"] = new / elapsed if elapsed > 0 and new > 0 else None
                if done >= info.total:
                    row["state"], row["eta"] = "finished", 0.0
                elif waiting:
                    row["state"] = "waiting"
                else:
                    row["state"] = "running"
                    if row["rate"]:
                        row["eta"] = (info.total - done) / row["rate"]
                out[name] = row
            return out

    def elapsed(self) -> float:
        end = self.ended if self.ended is not None else self.clock()
        return max(end - self.started, 0.0)


def status_counts(
    run: RunDir,
    tasks: Sequence[TaskInfo],
    scanners: dict[str, RecordScanner] | None = None,
    clock: StageClock | None = None,
) -> dict[str, Any]:
    """The data ``/status.json`` serves, and the page shows.

    Parameters
    ----------
    run
        The run directory.
    tasks
        The tasks to count, with their totals (and upstream tasks).
    scanners
        Record scanners per task to reuse between calls (they parse each record once).
    clock
        Where elapsed times, rates and ETAs come from (default: a clock started now).

    Returns
    -------
    dict
        ``{"run_dir", "total", "totals", "time", "elapsed", "finished", "tasks": {task:
        {"done", "skipped", "running", "failed", "pending"}}, "timing": {task: {"elapsed",
        "rate", "eta", "waiting", "state"}}, "failed_tiles": {task: [unit, ...]}, "failed":
        {task: [{"tile", "host", "message", "url"}]}, "running_tiles": {task: [{"tile",
        "host", "pid", "since"}]}, "workers": {task: {"host pid": running units}}, "legend":
        [[entry, tiles], ...]}``. The five counts of a task add up to its total (``running``:
        ``fn`` was called without a result yet, as ``blockbuster status`` counts them);
        ``total`` is the largest total (a pipeline's tiles); ``legend`` is the block map's,
        from the same counts (a ``tile_process`` run only). At most 50 failed and 50
        running units are listed per task.
    """
    from blockbuster.ui.report import legend_counts

    scanners = scanners if scanners is not None else {}
    clock = clock if clock is not None else StageClock()
    counts: dict[str, dict[str, int]] = {}
    failed_tiles: dict[str, list[int]] = {}
    failed: dict[str, list[dict[str, Any]]] = {}
    running: dict[str, list[dict[str, Any]]] = {}
    workers: dict[str, dict[str, int]] = {}
    for info in tasks:
        scanner = scanners.setdefault(info.name, RecordScanner(run.records(info.name)))
        seen = scanner.scan()
        counts[info.name] = seen.states(info.total)
        listed = sorted(seen.failed)[:MAX_FAILED_LISTED]
        failed_tiles[info.name] = listed
        last_error: dict[int, dict[str, Any]] = {}
        wanted = set(listed)
        for record in list(scanner.index.errors):
            for tile in record_tiles(record, record["tile"]):
                if tile in wanted:
                    last_error[tile] = record
        failed[info.name] = [
            {
                "tile": tile,
                "host": str(last_error.get(tile, {}).get("host", "")),
                "message": _last_line(last_error.get(tile, {}).get("traceback", "")),
                "url": f"traceback/{info.name}/{tile}",
            }
            for tile in listed
        ]
        calls = scanner.index.last_call
        rows: list[dict[str, Any]] = []
        per_worker: dict[str, int] = {}
        for tile in sorted(seen.running):
            call = calls.get(tile, {})
            who = f"{call.get('host', '?')} {call.get('pid', '?')}"
            per_worker[who] = per_worker.get(who, 0) + 1
            if len(rows) < MAX_RUNNING_LISTED:
                rows.append(
                    {
                        "tile": tile,
                        "host": str(call.get("host", "")),
                        "pid": call.get("pid"),
                        "since": call.get("time"),
                    }
                )
        running[info.name] = rows
        workers[info.name] = dict(sorted(per_worker.items()))
    has_map = run.spec_file.exists() and "segment" in counts
    return {
        "run_dir": str(run.root.absolute()),
        "total": max((info.total for info in tasks), default=0),
        "totals": {info.name: info.total for info in tasks},
        "time": time.time(),
        "elapsed": clock.elapsed(),
        "finished": clock.ended is not None,
        "tasks": counts,
        "timing": clock.timing(tasks, counts),
        "failed_tiles": failed_tiles,
        "failed": failed,
        "running_tiles": running,
        "workers": workers,
        "legend": [list(e) for e in legend_counts(counts)] if has_map else [],
    }


def _last_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[-1] if lines else ""


def find_traceback(
    run: RunDir, task: str, unit: int, scanner: RecordScanner | None = None
) -> str | None:
    """The traceback of the last failed attempt at ``unit`` of ``task`` (the block holding
    it, for blocks of several tiles), as ``blockbuster status --tracebacks`` shows it; None
    when it has no failed attempt."""
    scanner = scanner if scanner is not None else RecordScanner(run.records(task))
    scanner.scan()
    found = None
    for record in list(scanner.index.errors):
        if unit in record_tiles(record, record["tile"]):
            found = record
    if found is None:
        return None
    return (
        f"=== {task} {unit} on {found.get('host', '?')}"
        f" (block {found['tile']}, {time.ctime(float(found.get('time', 0)))})\n"
        f"{str(found.get('traceback', '')).rstrip()}\n"
    )


def run_parameters(run: RunDir) -> list[tuple[str, str]]:
    """What the page names about a run: input, output, tile shape, overlap, workers, fn."""
    from blockbuster.pipeline.spec import read_spec

    out: list[tuple[str, str]] = []
    try:
        config = run.read_config()
    except Exception:  # a damaged config must not cost the page
        config = None
    if run.spec_file.exists():
        try:
            spec = read_spec(run)
        except Exception:
            spec = None
        if spec is not None:
            plan = spec.plan
            src = spec.source.store + (f" ({spec.source.path})" if spec.source.path else "")
            dst = spec.output_store + (f" ({spec.output_path})" if spec.output_path else "")
            out += [
                ("input", f"{src}, shape {'x'.join(map(str, spec.source.shape))}"),
                ("output", dst),
                ("tile shape", "x".join(map(str, plan.tile))),
                ("overlap", ",".join(map(str, plan.overlap))),
                ("tiles", f"{plan.num_tiles} (grid {'x'.join(map(str, plan.grid))})"),
            ]
    if config is not None:
        out.append(("workers", f"{config.num_workers} ({config.backend})"))
    fn = "-"
    if run.fn_ref_file.exists():
        try:
            ref = json.loads(run.fn_ref_file.read_text())
            kwargs = ", ".join(f"{k}={v!r}" for k, v in dict(ref.get("kwargs", {})).items())
            fn = f"{ref['ref']}({kwargs})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    elif run.fn_file.exists():
        fn = f"cloudpickled ({run.fn_file.name})"
    if run.spec_file.exists():
        out.append(("fn", fn))
    out.append(("run dir", str(run.root.absolute())))
    return out


# -- rendering ----------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.8em; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
table.params td { text-align: left; }
td.bad { color: #c00; font-weight: bold; }
progress { width: 10em; }
#block-map { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; font-size: 0.9em; }
.legend span.swatch { display: inline-block; width: 0.9em; height: 0.9em;
  border: 1px solid #555; vertical-align: middle; margin: 0 0.3em 0 0.8em; }
h2 { font-size: 1.1em; margin: 1.2em 0 0.3em; }
"""

_KEYS = ("done", "skipped", "running", "failed", "pending")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _secs(value: Any) -> str:
    return format_eta(float(value)) if isinstance(value, (int, float)) else "-"


def _swatch_css(name: str) -> str:
    from blockbuster.ui.report import LATER_FAILED_COLOR, STATE_COLORS

    if name in STATE_COLORS:
        r, g, b, a = STATE_COLORS[name]
        return f"background: rgba({r * 255:.0f}, {g * 255:.0f}, {b * 255:.0f}, {a})"
    r, g, b = LATER_FAILED_COLOR
    return f"border: 2px solid rgb({r * 255:.0f}, {g * 255:.0f}, {b * 255:.0f})"


def render_panel(status: dict[str, Any] | None, tasks: Sequence[TaskInfo]) -> str:
    """The page's changing part as HTML: the table of tasks with times, the block map's
    legend, the failed units (linking to their tracebacks) and the running ones. Before any
    ``status``, the table's cells hold placeholders."""
    parts = []
    if status is None:
        head = "run <span id='run-state'>starting</span>"
    else:
        state = "finished" if status["finished"] else "running"
        head = (
            f"run <span id='run-state'>{state}</span> &middot; elapsed "
            f"<span id='elapsed'>{_secs(status['elapsed'])}</span> &middot; as of "
            f"<span id='updated'>{_e(time.strftime('%H:%M:%S', time.localtime(status['time'])))}"
            "</span>"
        )
    parts.append(f"<p id='run-line'>{head}</p>")
    rows = []
    for info in tasks:
        t = _e(info.name)
        counts = status["tasks"][info.name] if status else None
        timing = status["timing"].get(info.name, {}) if status else {}
        cells = []
        for key in _KEYS:
            value = str(counts[key]) if counts else "&hellip;"
            bad = ' class="bad"' if counts and key == "failed" and counts[key] > 0 else ""
            cells.append(f'<td id="{t}-{key}"{bad}>{value}</td>')
        if counts:
            done = counts["done"] + counts["skipped"]
            bar = f'<progress id="{t}-progress" max="{info.total}" value="{done}"></progress>'
        else:
            bar = f'<progress id="{t}-progress"></progress>'
        rate = timing.get("rate")
        unit = _e(info.unit_name)
        rate_text = f"{rate:.2f} {unit}/s" if isinstance(rate, (int, float)) else "-"
        stage_state = timing.get("state")
        if stage_state == "waiting":
            eta = "waiting for " + _e(", ".join(timing.get("waiting", [])))
        elif stage_state == "finished":
            eta = "finished"
        elif stage_state == "not started":
            eta = "not started"
        elif timing.get("eta") is not None:
            eta = _secs(timing["eta"])
        else:
            eta = "-" if counts else "&hellip;"
        rows.append(
            f"<tr><td>{t}</td>{''.join(cells)}<td>{bar}</td>"
            f'<td id="{t}-elapsed">{_secs(timing.get("elapsed")) if counts else "&hellip;"}</td>'
            f'<td id="{t}-rate">{rate_text if counts else "&hellip;"}</td>'
            f'<td id="{t}-eta">{eta}</td></tr>'
        )
    parts.append(
        "<table id='tasks'><thead><tr><th>task</th><th>done</th><th>skipped</th>"
        "<th>running</th><th>failed</th><th>pending</th><th>progress</th><th>elapsed</th>"
        "<th>rate</th><th>ETA</th></tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )
    if status and status.get("legend"):
        entries = "".join(
            f'<span class="swatch" style="{_swatch_css(name)}"></span>'
            f'<span class="legend-entry" data-state="{_e(name)}">{_e(name)} {n}</span>'
            for name, n in status["legend"]
        )
        parts.append(f"<p id='legend' class='legend'>block map: {entries}</p>")
    if status:
        failed_items = []
        for info in tasks:
            for f in status["failed"].get(info.name, []):
                where = f" on {_e(f['host'])}" if f["host"] else ""
                failed_items.append(
                    f'<li><a class="traceback" href="{_e(f["url"])}">{_e(info.name)} '
                    f"{_e(info.unit_name.rstrip('s'))} {f['tile']}</a>{where}: "
                    f"{_e(f['message'])}</li>"
                )
        summary = "; ".join(
            f"{_e(t)} failed {_e(next((i.unit_name for i in tasks if i.name == t), 'tiles'))}: "
            + ", ".join(map(str, tiles))
            for t, tiles in status["failed_tiles"].items()
            if tiles
        )
        parts.append(f"<p id='failed-list' class='muted'>{summary}</p>")
        if failed_items:
            parts.append(
                "<h2>failed (last attempt; click for its traceback)</h2>"
                f"<ul id='failed'>{''.join(failed_items)}</ul>"
            )
        run_rows = []
        now = status["time"]
        for info in tasks:
            for r in status["running_tiles"].get(info.name, []):
                since = r.get("since")
                age = _secs(now - since) if isinstance(since, (int, float)) else "-"
                run_rows.append(
                    f"<tr><td>{_e(info.name)}</td><td>{r['tile']}</td><td>{_e(r['host'])}</td>"
                    f"<td>{_e(r['pid'] if r['pid'] is not None else '-')}</td><td>{age}</td></tr>"
                )
        workers = sum(len(w) for w in status["workers"].values())
        if run_rows:
            parts.append(
                f"<h2>running (<span id='num-workers'>{workers}</span> worker(s))</h2>"
                "<table id='running'><thead><tr><th>task</th><th>unit</th><th>host</th>"
                "<th>pid</th><th>for</th></tr></thead><tbody>"
                + "".join(run_rows)
                + "</tbody></table>"
            )
        else:
            parts.append("<p id='running' class='muted'>no unit running</p>")
    return "\n".join(parts)


_SCRIPT = """
<script>
function reloadMap() {
  if (!document.getElementById("block-map")) return;
  const next = new Image();
  next.onload = () => {
    const img = document.getElementById("block-map");
    img.src = next.src;
    img.dataset.loaded = String(next.naturalWidth) + "x" + String(next.naturalHeight);
  };
  next.src = "block_map.png?t=" + Date.now();
}
let timer = null;
async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const response = await fetch("panel.html", {cache: "no-store"});
    if (!response.ok) throw new Error(response.statusText);
    document.getElementById("panel").innerHTML = await response.text();
    reloadMap();
    if (response.headers.get("X-Run-State") === "finished") {
      connection.textContent = "run finished: final state";
      clearInterval(timer);
    } else {
      connection.textContent = "live";
    }
  } catch (err) {
    connection.textContent = "no answer from the driver (it exited): the last state shown";
  }
}
refresh();
timer = setInterval(refresh, REFRESH_MS);
</script>
"""


def render_page(
    run: RunDir,
    tasks: Sequence[TaskInfo],
    status: dict[str, Any] | None,
    *,
    params: Sequence[tuple[str, str]] = (),
    map_png: bytes | None = None,
    has_map: bool = False,
    refresh: float = 3.0,
) -> str:
    """The status page as HTML.

    Live (``map_png`` None): the panel from ``status`` (placeholders when None) and a
    script refreshing it from the server. Static (``map_png`` given): self-contained, the
    map embedded as a ``data:`` URI, no script and no other address.
    """
    root = run.root.absolute()
    static = map_png is not None
    if has_map or static:
        size = f"{max((t.total for t in tasks), default=0)} tiles"
    else:
        size = ", ".join(f"{t.name}: {t.total} {t.unit_name}" for t in tasks)
    param_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in params)
    if static:
        src = "data:image/png;base64," + base64.b64encode(map_png or b"").decode()
        block_map = f'<img id="block-map" alt="block map" src="{src}">' if map_png else ""
        connection = "final state (a copy written when the run ended)"
        script = ""
    else:
        block_map = (
            '<img id="block-map" alt="block map" src="block_map.png?t=0">' if has_map else ""
        )
        connection = "connecting&hellip;"
        script = _SCRIPT.replace("REFRESH_MS", str(int(refresh * 1000)))
    noscript = (
        ""
        if static
        else "<noscript><p>Scripts are off: the data is at "
        '<a href="status.json">status.json</a>.</p></noscript>'
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>blockbuster: {_e(root.name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>blockbuster run</h1>
<p class="muted">{_e(root)} &middot; {_e(size)} &middot;
<span id="connection">{connection}</span></p>
{noscript}
<table class="params" id="params">{param_rows}</table>
<div id="panel">
{render_panel(status, tasks)}
</div>
{block_map}
{script}
</body>
</html>
"""


# -- serving ------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class _State:
    """What the handlers share: the run, its scanners, its clock and the cached block map;
    once the run finished, its final state (the run directory may go)."""

    def __init__(
        self, run: RunDir, tasks: Sequence[TaskInfo], map_seconds: float, refresh: float
    ) -> None:
        self.run = run
        self.tasks = list(tasks)
        self.has_map = run.spec_file.exists()
        self.map_seconds = map_seconds
        self.refresh = refresh
        self.clock = StageClock()
        self.params = run_parameters(run)
        self.scanners: dict[str, RecordScanner] = {}
        self.status_lock = threading.Lock()
        self.map_lock = threading.Lock()
        self.block_map: Any = None
        self.map_png: bytes | None = None
        self.map_time = -float("inf")
        #: set when the run finished: the final status, map and tracebacks, served from memory
        self.final: dict[str, Any] | None = None
        self.final_png: bytes | None = None
        self.final_tracebacks: dict[tuple[str, int], str] = {}
        self.status()  # the clock's first look: units done before the page started do not count

    def status(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        with self.status_lock:
            return status_counts(self.run, self.tasks, self.scanners, self.clock)

    def page(self) -> bytes:
        return render_page(
            self.run,
            self.tasks,
            None,
            params=self.params,
            has_map=self.has_map,
            refresh=self.refresh,
        ).encode()

    def panel(self) -> bytes:
        return render_panel(self.status(), self.tasks).encode()

    def traceback(self, task: str, unit: int) -> str | None:
        if self.final is not None:
            return self.final_tracebacks.get((task, unit))
        with self.status_lock:
            return find_traceback(self.run, task, unit, self.scanners.get(task))

    def png(self) -> bytes:
        if self.final_png is not None:
            return self.final_png
        with self.map_lock:
            if self.map_png is None or time.monotonic() - self.map_time >= self.map_seconds:
                if self.block_map is None:
                    from blockbuster.ui.report import BlockMap

                    self.block_map = BlockMap(self.run)
                self.map_png = self.block_map.png(legend=False)  # the page shows the legend
                self.map_time = time.monotonic()
            return self.map_png

    def finish(self, map_png: bytes | None = None) -> None:
        """Keep the final state in memory (before the run directory may be removed); the
        final block map is ``map_png`` when the run's report drew it already."""
        if self.final is not None:
            return
        status = self.status()
        tracebacks = {}
        for task, tiles in status["failed_tiles"].items():
            for tile in tiles:
                text = self.traceback(task, tile)
                if text is not None:
                    tracebacks[(task, tile)] = text
        png = map_png
        if self.has_map and png is None:
            self.map_png = None  # draw it anew: the final state
            try:
                png = self.png()
            except Exception as e:  # a picture must never fail a run
                print(f"blockbuster: could not draw the block map: {e}", file=sys.stderr)
        self.final_tracebacks, self.final_png = tracebacks, png
        self.final = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle kept-alive connection holds its thread

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        path = urlsplit(self.path).path
        state = self.server.state
        try:
            if path in ("/", "/index.html"):
                self._send(state.page(), "text/html; charset=utf-8")
            elif path == "/status.json":
                self._send(json.dumps(state.status()).encode(), "application/json")
            elif path == "/panel.html":
                finished = "finished" if state.final is not None else "running"
                self._send(state.panel(), "text/html; charset=utf-8", run_state=finished)
            elif path.startswith("/traceback/"):
                task, _, unit = unquote(path[len("/traceback/") :]).rpartition("/")
                text = state.traceback(task, int(unit)) if unit.isdigit() else None
                if text is None:
                    body = f"no failed attempt recorded for {task} {unit}\n".encode()
                    self._send(body, "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)
                else:
                    self._send(text.encode(), "text/plain; charset=utf-8")
            elif path == "/block_map.png" and state.has_map:
                self._send(state.png(), "image/png")
            else:
                self._send(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)
        except Exception as err:  # a broken page must not end the run; say why instead
            message = f"{type(err).__name__}: {err}\n".encode()
            self._send(message, "text/plain; charset=utf-8", HTTPStatus.SERVICE_UNAVAILABLE)

    def _send(
        self,
        body: bytes,
        ctype: str,
        code: HTTPStatus = HTTPStatus.OK,
        run_state: str | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if run_state is not None:
            self.send_header("X-Run-State", run_state)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # requests are not worth a line on the driver's terminal


class StatusServer:
    """A running status page; :func:`start_status_server` makes one.

    Attributes
    ----------
    url
        Address of the page, e.g. ``http://127.0.0.1:40123/``.
    host, port
        Where it listens.
    """

    def __init__(self, server: _Server, host: str) -> None:
        self._server = server
        self.state = server.state
        self.port = int(server.server_address[1])
        self.host = host
        shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="blockbuster-status-page",
            daemon=True,
        )
        self._thread.start()

    def finish(self, map_png: bytes | None = None) -> None:
        """The run ended: serve its final state from memory from now on (until closed);
        ``map_png``: the final block map, when drawn already."""
        self.state.clock(RunFinished(self.state.run.root, None))
        self.state.finish(map_png)

    def close(self) -> None:
        """Stop serving and free the port (waits for the serving thread, not for requests)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        if self in _lingering:
            _lingering.remove(self)

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: pages of finished runs still served (until the process exits or the next run's page starts)
_lingering: list[StatusServer] = []


def start_status_server(
    run: RunDir,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tasks: Sequence[TaskInfo] | None = None,
    refresh: float = 3.0,
    map_seconds: float = 2.0,
) -> StatusServer:
    """Serve the live status page of ``run`` from a daemon thread.

    Parameters
    ----------
    run
        The run directory (its ``spec.json`` must exist).
    host
        Address to listen on; ``127.0.0.1`` (default) keeps the page private to this machine,
        ``0.0.0.0`` serves every interface.
    port
        Port to listen on; 0 (default) takes any free one (see ``.url``).
    tasks
        The tasks to show, with their totals (default: those the run directory names; a
        ``tile_process`` run's three stages). The block map is drawn for ``tile_process``
        runs only.
    refresh
        Seconds between two refreshes of the page in the browser.
    map_seconds
        Seconds a drawn block map is served before it is drawn again.

    Returns
    -------
    StatusServer
        Running; call ``.close()`` (or use it as a context manager) to stop it.

    Raises
    ------
    OSError
        If the address cannot be bound.
    """
    shown = list(tasks) if tasks is not None else run_tasks_of(run)
    server = _Server((host, port), _Handler)
    server.state = _State(run, shown, map_seconds, refresh)
    return StatusServer(server, host)


def write_status_page(
    run: RunDir,
    path: Path | str,
    *,
    clock: StageClock | None = None,
    map_png: bytes | None = None,
    tasks: Sequence[TaskInfo] | None = None,
) -> Path:
    """Write a self-contained copy of ``run``'s status page (its state now) to ``path``.

    The block map (``map_png``, else drawn now for a ``tile_process`` run) is embedded as a
    ``data:`` URI; the page has no script and names no other address, so it can be mailed
    or archived. Failed units link to nothing: their last error line is shown.
    """
    from blockbuster.run.files import write_atomic

    shown = list(tasks) if tasks is not None else run_tasks_of(run)
    status = status_counts(run, shown, clock=clock)
    for rows in status["failed"].values():
        for row in rows:
            row["url"] = ""
    if map_png is None and run.spec_file.exists():
        from blockbuster.ui.report import BlockMap

        map_png = BlockMap(run).png()
    page = render_page(run, shown, status, params=run_parameters(run), map_png=map_png or b"")
    page = page.replace('<a class="traceback" href="">', '<a class="traceback">')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page.encode(), mode=0o644)
    return path


class StatusPageObserver:
    """An observer that serves the live status page of a pipeline run while it runs, and its
    final state after it ended (until the driver's process exits, or the next run's page
    starts).

    Parameters
    ----------
    address
        ``HOST:PORT`` (port 0: any free one); the URL is printed when the run starts.
    final_map
        Returns the final block map's PNG when an observer before this one drew it at the
        run's end (the :class:`~blockbuster.ui.report.Reporter`), so it is drawn once.
    """

    def __init__(self, address: str, final_map: Callable[[], bytes | None] | None = None) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.final_map = final_map
        self.server: StatusServer | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and self.server is None:
            for old in list(_lingering):  # a finished run's page gives way (and its port)
                old.close()
            run = RunDir(event.run_dir)
            self.server = start_status_server(
                run, host=self.host, port=self.port, tasks=event.tasks
            )
            self.server.state.clock(event)
            url = self.server.url
            print(f"blockbuster: live status page at {url}", file=sys.stderr, flush=True)
        elif isinstance(event, RunFinished) and self.server is not None:
            self.server.finish(self.final_map() if self.final_map is not None else None)
            _lingering.append(self.server)
            print(
                f"blockbuster: the status page at {self.server.url} shows the final state "
                "until this process exits",
                file=sys.stderr,
                flush=True,
            )
            self.server = None
        elif self.server is not None:
            self.server.state.clock(event)
