"""Chaos: kill and freeze the driver and its workers at random moments; every output must equal
a clean run.

Each round starts a driver (its own process) on a small 3D volume, waits a random time, then
does one of

* ``driver``: SIGKILL the driver, wait for its workers to go, and run the same call again;
* ``worker``: SIGKILL a random worker (daisy starts another, the block is redone);
* ``freeze``: SIGSTOP a random worker (its supervisor kills it past the block timeout);
* ``double``: start a second driver on the same run (it must be refused);

and then lets the run finish (resuming as often as needed). The final labels are compared
with a clean run's, voxel for voxel. Writes ``results/chaos.json``.

    .venv/bin/python scripts/chaos.py --rounds 20
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("driver", "worker", "freeze", "double")


def slow_label(block: np.ndarray, delay: float) -> np.ndarray:
    """Threshold + connected components, after ``delay`` seconds (a stand-in for a model)."""
    time.sleep(delay)
    return ndi.label(block > 0.5)[0]


def drive(src: str, out: str, delay: float) -> None:
    """One driver: the call every round makes (and repeats to resume)."""
    from blockbuster import tile_process

    fn = functools.partial(slow_label, delay=delay)
    tile_process(
        src,
        fn,
        (8, 16, 16),
        2,
        write_to=out,
        num_workers=2,
        merge_threshold=0.0,
        timeout=6,
        status_page=None,
    )


def _driver(src: str, out: Path, delay: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--drive", src, str(out), "--delay", str(delay)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers(run_dir: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"blockbuster.worker" in cmd and str(run_dir).encode() in cmd:
            pids.append(int(pid))
    return pids


def _wait_gone(run_dir: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while _workers(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _workers(run_dir):  # a frozen orphan: the driver that would kill it is gone
        os.kill(pid, signal.SIGKILL)


def _finish(src: str, out: Path, delay: float, limit: float = 300) -> int:
    """Run the same call until it succeeds; return the extra resumes it took."""
    resumes = 0
    while True:
        proc = _driver(src, out, delay)
        _, err = proc.communicate(timeout=limit)
        if proc.returncode == 0:
            return resumes
        resumes += 1
        if resumes > 3:
            raise RuntimeError(f"the run did not finish after {resumes} resumes:\n{err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.08, help="seconds fn takes per tile")
    parser.add_argument("--workdir", default=str(ROOT / "results" / "tmp" / "chaos"))
    parser.add_argument("--drive", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive[0], args.drive[1], args.delay)
        return
    rng = random.Random(args.seed)
    # a folder of its own inside --workdir: the script never deletes what it did not make
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.workdir))
    img = ndi.gaussian_filter(np.random.default_rng(args.seed).random((24, 48, 48)), 2)
    img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)
    src = str(work / "img.zarr")
    arr = zarr.create_array(src, shape=img.shape, chunks=(8, 16, 16), dtype=img.dtype)
    arr[:] = img
    start = time.monotonic()
    clean_out = work / "clean.zarr"
    _finish(src, clean_out, args.delay)
    clean_s = time.monotonic() - start
    clean = zarr.open_array(str(clean_out))[:]
    print(f"clean run: {clean_s:.1f} s, {len(np.unique(clean)) - 1} labels, 27 tiles")
    rounds = []
    for r in range(args.rounds):
        kind = KINDS[r % len(KINDS)]
        out = work / f"out{r}.zarr"
        run_dir = out.with_name(out.name + ".blockbuster")
        # a second driver needs its start-up (imports, the input's fingerprint) to meet the
        # first one still running
        at = rng.uniform(0.3, clean_s * (0.4 if kind == "double" else 0.9))
        t0 = time.monotonic()
        proc = _driver(src, out, args.delay)
        time.sleep(at)
        hit = "-"
        if kind == "driver":
            hit = "driver" if proc.poll() is None else "finished first"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _wait_gone(run_dir)
        elif kind in ("worker", "freeze"):
            pids = _workers(run_dir)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL if kind == "worker" else signal.SIGSTOP)
                hit = "worker"
        else:
            second = _driver(src, out, args.delay)
            _, err = second.communicate(timeout=120)
            refused = "another blockbuster driver is running this run" in err
            hit = "refused" if refused else ("finished first" if second.returncode == 0 else err)
        if proc.poll() is None or proc.returncode != 0:
            proc.communicate(timeout=300)
        resumes = _finish(src, out, args.delay) if not _done(out) else 0
        equal = bool(np.array_equal(zarr.open_array(str(out))[:], clean))
        rounds.append(
            {
                "round": r,
                "kind": kind,
                "at_s": round(at, 2),
                "hit": hit,
                "resumes": resumes,
                "equal": equal,
                "seconds": round(time.monotonic() - t0, 1),
                "run_dir_left": run_dir.exists(),
            }
        )
        print(json.dumps(rounds[-1]), flush=True)
    mismatches = sum(not r["equal"] for r in rounds)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "rounds": len(rounds),
        "by_kind": {k: sum(r["kind"] == k for r in rounds) for k in KINDS},
        "hits": {h: sum(r["hit"] == h for r in rounds) for h in {r["hit"] for r in rounds}},
        "mismatches": mismatches,
        "run_dirs_left": sum(r["run_dir_left"] for r in rounds),
        "clean_seconds": round(clean_s, 1),
        "rounds_detail": rounds,
    }
    (ROOT / "results" / "chaos.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work)
    print(
        f"{len(rounds)} rounds, {mismatches} mismatches, "
        f"{summary['run_dirs_left']} run directories left behind"
    )
    sys.exit(1 if mismatches or summary["run_dirs_left"] else 0)


def _done(out: Path) -> bool:
    from blockbuster.run.ownership import output_mark

    mark = output_mark(out) if out.exists() else None
    return (
        bool(mark and mark.get("complete"))
        and not out.with_name(out.name + ".blockbuster").exists()
    )


if __name__ == "__main__":
    main()
