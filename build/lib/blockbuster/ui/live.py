"""A live status page of a run, served from a daemon thread while the driver runs.

Pages:

``/``
    Per task units (tiles, or a user task's blocks) done, running, failed and pending, and,
    for a ``tile_process`` run, the block map; a script refreshes both every few seconds
    (the counts from ``/status.json``, the picture by reloading
    ``/block_map.png``).
``/status.json``
    The counts, read from the record files on every request (one directory listing per task).
``/block_map.png``
    The block map (see :class:`blockbuster.ui.report.BlockMap`), redrawn at most every couple
    of seconds however many browsers ask.

Only the standard library serves it; it binds to ``127.0.0.1`` unless told otherwise, so it
is private to the machine (reach it from elsewhere with an SSH tunnel).
"""

from __future__ import annotations

import html
import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from blockbuster.run.events import Event, RunFinished, RunStarted, TaskInfo
from blockbuster.run.records import RecordScanner
from blockbuster.run.rundir import RunDir
from blockbuster.ui.status import run_tasks_of

__all__ = ["StatusPageObserver", "StatusServer", "start_status_server", "status_counts"]

MAX_FAILED_LISTED = 50


def status_counts(
    run: RunDir,
    tasks: Sequence[TaskInfo],
    scanners: dict[str, RecordScanner] | None = None,
) -> dict[str, Any]:
    """The counts ``/status.json`` serves.

    Parameters
    ----------
    run
        The run directory.
    tasks
        The tasks to count, with their totals.
    scanners
        Record scanners per task to reuse between calls (they parse each record once).

    Returns
    -------
    dict
        ``{"run_dir", "total", "totals", "time", "tasks": {task: {"done", "failed",
        "pending", "running"}}, "failed_tiles": {task: [unit, ...]}}``: the four counts of a
        task add up to its total (``running``: ``fn`` was called without a result yet, as
        ``blockbuster status`` counts them); ``total`` is the largest total (a pipeline's
        tiles). At most 50 failed units are listed per task.
    """
    scanners = scanners if scanners is not None else {}
    counts: dict[str, dict[str, int]] = {}
    failed_tiles: dict[str, list[int]] = {}
    for info in tasks:
        scanner = scanners.setdefault(info.name, RecordScanner(run.records(info.name)))
        seen = scanner.scan()
        counts[info.name] = seen.states(info.total)
        failed_tiles[info.name] = sorted(seen.failed)[:MAX_FAILED_LISTED]
    return {
        "run_dir": str(run.root.absolute()),
        "total": max((info.total for info in tasks), default=0),
        "totals": {info.name: info.total for info in tasks},
        "time": time.time(),
        "tasks": counts,
        "failed_tiles": failed_tiles,
    }


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>blockbuster: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ padding: 0.3em 0.9em; text-align: right; border-bottom: 1px solid #ddd; }}
th:first-child, td:first-child {{ text-align: left; }}
td.bad {{ color: #c00; font-weight: bold; }}
progress {{ width: 12em; }}
#block-map {{ max-width: 100%; border: 1px solid #ddd; }}
.muted {{ color: #777; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>blockbuster run</h1>
<p class="muted">{run_dir} &middot; {size} &middot;
<span id="connection">connecting&hellip;</span> &middot; updated <span id="updated">-</span></p>
<noscript><p>Scripts are off: the counts are at <a href="status.json">status.json</a>.</p>
</noscript>
<table>
<thead><tr><th>task</th><th>done</th><th>skipped</th><th>running</th><th>failed</th><th>pending</th>
<th>progress</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<p id="failed-list" class="muted"></p>
{block_map}
<script>
const TASKS = {tasks_json};
const KEYS = ["done", "skipped", "running", "failed", "pending"];
function show(status) {{
  for (const task of TASKS) {{
    const counts = status.tasks[task];
    for (const key of KEYS) {{
      document.getElementById(task + "-" + key).textContent = counts[key];
    }}
    document.getElementById(task + "-failed").classList.toggle("bad", counts.failed > 0);
    const bar = document.getElementById(task + "-progress");
    bar.max = status.totals[task];
    bar.value = counts.done + counts.skipped;
  }}
  const failed = TASKS.filter(t => status.failed_tiles[t].length)
    .map(t => t + " failed tiles: " + status.failed_tiles[t].join(", "));
  document.getElementById("failed-list").textContent = failed.join("; ");
  document.getElementById("updated").textContent =
    new Date(status.time * 1000).toLocaleTimeString();
}}
function reloadMap() {{
  if (!document.getElementById("block-map")) return;
  const next = new Image();
  next.onload = () => {{
    const img = document.getElementById("block-map");
    img.src = next.src;
    img.dataset.loaded = String(next.naturalWidth) + "x" + String(next.naturalHeight);
  }};
  next.src = "block_map.png?t=" + Date.now();
}}
async function refresh() {{
  const connection = document.getElementById("connection");
  try {{
    const response = await fetch("status.json", {{cache: "no-store"}});
    if (!response.ok) throw new Error(response.statusText);
    show(await response.json());
    connection.textContent = "live";
    reloadMap();
  }} catch (err) {{
    connection.textContent = "no answer from the driver (run finished or stopped)";
  }}
}}
refresh();
setInterval(refresh, {refresh_ms});
</script>
</body>
</html>
"""

_ROW = (
    '<tr><td>{t}</td><td id="{t}-done">&hellip;</td><td id="{t}-skipped">&hellip;</td>'
    '<td id="{t}-running">&hellip;</td>'
    '<td id="{t}-failed">&hellip;</td><td id="{t}-pending">&hellip;</td>'
    '<td><progress id="{t}-progress"></progress></td></tr>'
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    page: bytes
    state: _State


class _State:
    """What the handlers share: the run, its scanners and the cached block map."""

    def __init__(self, run: RunDir, tasks: Sequence[TaskInfo], map_seconds: float) -> None:
        self.run = run
        self.tasks = list(tasks)
        self.has_map = run.spec_file.exists()
        self.map_seconds = map_seconds
        self.scanners: dict[str, RecordScanner] = {}
        self.status_lock = threading.Lock()
        self.map_lock = threading.Lock()
        self.block_map: Any = None
        self.map_png: bytes | None = None
        self.map_time = -float("inf")

    def status(self) -> bytes:
        with self.status_lock:
            return json.dumps(status_counts(self.run, self.tasks, self.scanners)).encode()

    def png(self) -> bytes:
        with self.map_lock:
            if self.map_png is None or time.monotonic() - self.map_time >= self.map_seconds:
                if self.block_map is None:
                    from blockbuster.ui.report import BlockMap

                    self.block_map = BlockMap(self.run)
                self.map_png = self.block_map.png()
                self.map_time = time.monotonic()
            return self.map_png


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle kept-alive connection holds its thread

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        path = urlsplit(self.path).path
        state = self.server.state
        try:
            if path in ("/", "/index.html"):
                self._send(self.server.page, "text/html; charset=utf-8")
            elif path == "/status.json":
                self._send(state.status(), "application/json")
            elif path == "/block_map.png" and state.has_map:
                self._send(state.png(), "image/png")
            else:
                self._send(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)
        except Exception as err:  # a broken page must not end the run; say why instead
            message = f"{type(err).__name__}: {err}\n".encode()
            self._send(message, "text/plain; charset=utf-8", HTTPStatus.SERVICE_UNAVAILABLE)

    def _send(self, body: bytes, ctype: str, code: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
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

    def close(self) -> None:
        """Stop serving and free the port (waits for the serving thread, not for requests)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
    state = _State(run, shown, map_seconds)
    server = _Server((host, port), _Handler)
    server.state = state
    names = [info.name for info in shown]
    rows = "\n".join(_ROW.format(t=html.escape(name)) for name in names)
    root = run.root.absolute()
    if state.has_map:
        size = f"{max(info.total for info in shown)} tiles"
        block_map = '<img id="block-map" alt="block map" src="block_map.png?t=0">'
    else:
        size = ", ".join(f"{info.name}: {info.total} {info.unit_name}" for info in shown)
        block_map = ""
    page = _PAGE.format(
        name=html.escape(root.name),
        run_dir=html.escape(str(root)),
        size=html.escape(size),
        rows=rows,
        block_map=block_map,
        tasks_json=json.dumps(names),
        refresh_ms=int(refresh * 1000),
    )
    server.page = page.encode()
    return StatusServer(server, host)


class StatusPageObserver:
    """An observer that serves the live status page of a pipeline run while it runs.

    Parameters
    ----------
    address
        ``HOST:PORT`` (port 0: any free one); the URL is printed when the run starts.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.server: StatusServer | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and self.server is None:
            run = RunDir(event.run_dir)
            self.server = start_status_server(
                run, host=self.host, port=self.port, tasks=event.tasks
            )
            url = self.server.url
            print(f"blockbuster: live status page at {url}", file=sys.stderr, flush=True)
        elif isinstance(event, RunFinished) and self.server is not None:
            self.server.close()
            self.server = None
