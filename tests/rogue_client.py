"""A daisy client that reports blocks done without doing them (a test script).

``python rogue_client.py RUN_DIR TASK[,TASK...] ROUNDS``: for each task, connects to up to
ROUNDS of its servers (one per pass) as their run directory announces them, claims up to three
blocks of each and reports them done, then prints ``rogue TASK N`` (N blocks claimed).
"""

import json
import sys
import time
from pathlib import Path

import daisy


def main() -> None:
    run, tasks, rounds = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(seen) < rounds * len(tasks):
        for task in tasks:
            path = run / "server" / f"{task}.json"
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            key = (task, int(info["port"]))
            if key in seen or sum(k[0] == task for k in seen) >= rounds:
                continue
            seen.add(key)
            ctx = daisy.Context(
                hostname=info["host"], port=int(info["port"]), task_id=task, worker_id=-1, logdir=""
            )
            client = daisy.Client(context=ctx)
            claimed = 0
            for _ in range(3):
                with client.acquire_block() as block:
                    if block is None:
                        break
                    claimed += 1
            print("rogue", task, claimed, flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
