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

from blockbuster import make_local_cluster, tile_process
from blockbuster.plugins import watershed_fn
from blockbuster.synthetic import make_nuclei_volume

PAGE = "individual-fine-performance-metrics"


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
            url = f"http://127.0.0.1:{args.port}/{PAGE}"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    browser,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1400,1000",
                    "--timeout=10000",  # bokeh draws over a websocket after the page loads
                    f"--screenshot={Path(args.out).absolute()}",
                    url,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(f"screenshot of {url}: {args.out}")
        finally:
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
