"""Screenshot the Dask dashboard's Fine Performance Metrics after a blockbuster run.

Runs ``tile_process`` on a 2-process local cluster (each worker one thread, a memory limit),
with a performance report, then lets headless Chromium draw the dashboard page that groups
the run's work by span, ``("blockbuster", <stage>)``.

    python scripts/dask_dashboard.py [--out results/dask_spans.png] [--port 8787]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blockbuster import make_local_cluster, tile_process
from blockbuster.plugins import watershed_fn
from blockbuster.synthetic import make_nuclei_volume

PAGE = "individual-fine-performance-metrics"


def span_rows(dask_scheduler: Any) -> list[tuple[str, float, float]]:
    """Per blockbuster span on the scheduler: its name, wall seconds and task CPU seconds."""
    rows = []
    for sp in dask_scheduler.extensions["spans"].spans.values():
        if len(sp.name) != 2 or sp.name[0] != "blockbuster":
            continue
        cpu = sum(
            v
            for k, v in sp.cumulative_worker_metrics.items()
            if k[0] == "execute" and k[-2:] == ("thread-cpu", "seconds")
        )
        rows.append((" / ".join(sp.name), sp.stop - sp.start, cpu))
    return rows


def screenshot(browser: str, url: str, out: Path, wait: float = 8.0, port: int = 9333) -> None:
    """Draw ``url`` in headless Chromium and save it once the page's scripts drew (the
    dashboard draws over a websocket after the page loads, which --screenshot misses)."""
    import asyncio
    import base64
    import json
    import urllib.request

    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,460",
         f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                pages = json.loads(
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read()
                )
                break
            except OSError:
                time.sleep(0.1)
        ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")

        async def shoot() -> None:
            ws = await websocket_connect(ws_url, max_message_size=64 << 20)

            async def call(i: int, method: str, params: dict[str, Any] | None = None) -> Any:
                ws.write_message(json.dumps({"id": i, "method": method, "params": params or {}}))
                while True:
                    msg = json.loads(await ws.read_message())
                    if msg.get("id") == i:
                        return msg

            await call(1, "Page.enable")
            await call(2, "Page.navigate", {"url": url})
            await asyncio.sleep(wait)
            shot = await call(3, "Page.captureScreenshot", {"format": "png"})
            out.write_bytes(base64.b64decode(shot["result"]["data"]))

        IOLoop.current().run_sync(shoot)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="results/dask_spans.png")
    p.add_argument("--port", type=int, default=8787)
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs chromium (apt install chromium)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "nuclei.zarr"
        make_nuclei_volume(image, shape=(64, 512, 512), count=1500, chunks=(32, 256, 256))
        client, cluster = make_local_cluster(
            n_workers=2, memory_limit="4GiB", dashboard_address=f":{args.port}"
        )
        try:
            result = tile_process(
                str(image),
                watershed_fn(),
                (32, 128, 128),
                8,
                write_to=tmp / "labels.zarr",
                backend="dask",
                performance_report=str(tmp / "run.html"),
            )
            print(result.summary(table=False))
            time.sleep(3)  # the scheduler's metrics reach the page on its next refresh
            for row in client.run_on_scheduler(span_rows):
                print("span {:<28} wall {:6.2f} s   task thread-cpu {:6.2f} s".format(*row))
            url = f"http://127.0.0.1:{args.port}/{PAGE}"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            screenshot(browser, url, Path(args.out))
            print(f"screenshot of {url}: {args.out}")
        finally:
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
