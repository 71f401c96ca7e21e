"""A process that imports the worker's modules once, then forks each local worker from there.

A fresh ``python -m blockbuster.worker`` spends about 0.4 s of CPU on starting the interpreter
and importing numpy, zarr and the pipeline, before its first block. A run starts at least one
worker per stage and worker slot (six for two workers), so on a small machine that start-up
is a visible part of every run. The driver starts one zygote per call on this machine
(:class:`Zygote`, shared by the call's daisy runs); each local worker's supervisor asks it
over a Unix socket to fork the worker (:func:`spawn`) instead of starting an interpreter.

The child runs the program ``python -m blockbuster.worker`` runs, set up as that process
would be: its own session; the supervisor's stdin, stdout and stderr (passed over the
socket), environment and working directory; the interpreter's signal settings (SIGINT raises
KeyboardInterrupt, SIGPIPE ignored); stdout line-buffered on a terminal; fresh random state
(numpy's legacy generator reseeded, ``random`` reseeds itself); and the interpreter's own
exit (``atexit`` handlers, non-daemon threads joined). What it shares with the zygote: the
modules imported, and the string-hash seed (``PYTHONHASHSEED``), so sets of strings iterate
in the same order in every worker.

The zygote imports only blockbuster's own modules and their libraries, never a user's
module, torch or a GPU library. Forking after numpy's import is safe with the OpenBLAS that
numpy's wheels bundle, and with the one scipy's wheels bundle (``scipy.ndimage`` is
preloaded): each re-initialises its threads in the child; GPU workers, which pin
BLAS to one thread in their environment, differ in the import environment and are started
as interpreters, as are requests with another interpreter, ``PYTHONPATH`` or directory. A
zygote that is gone or refuses makes :func:`spawn` return None, and the supervisor starts
the interpreter as before.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["Zygote", "ZygoteChild", "spawn"]

#: what every worker imports before its first block (nothing that touches a GPU)
PRELOAD = (
    "blockbuster.worker",
    "blockbuster.pipeline.segment",
    "blockbuster.pipeline.stitch",
    "blockbuster.pipeline.relabel",
    "blockbuster.pipeline.pyramid",
    # what most fns label with (the built-in ones, scikit-image, Cellpose's post-processing)
    "scipy.ndimage",
)
#: the environment the zygote's imports depend on (the path; the thread pools numpy's BLAS
#: starts at import, which GPU workers pin to one thread): a request that differs is refused
IMPORT_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
SOCKET_NAME = "zygote.sock"
#: the zygote's output when :meth:`Zygote.start` is given no log: beside its socket
LOG_NAME = "zygote.log"
#: seconds :meth:`Zygote.start` waits for the socket
START_S = 10.0
MAX_MESSAGE = 1 << 20


class _Forked(Exception):
    """Raised in a forked child, to leave the zygote's loop with the request it runs."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__("forked")
        self.request = request


def run_child(request: dict[str, Any]) -> int:
    """In a forked child: set up what a fresh ``python -m blockbuster.worker`` has, run it and
    return its exit status (exceptions and ``SystemExit`` propagate, as in that program)."""
    # the interpreter's own settings: Ctrl-C raises, a closed pipe raises instead of killing
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    # stdout buffered as the interpreter chooses for the caller's stdout (line on a terminal)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
    import numpy as np

    # the legacy global generator (``random`` reseeds itself on fork)
    np.random.seed()  # noqa: NPY002
    sys.argv = list(request["argv"])
    from blockbuster.worker import main

    return main(sys.argv[1:])


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.send(json.dumps(message).encode())


class _Server:
    """The zygote's loop: accept requests, fork children, report their exit status."""

    def __init__(self, path: str, parent: int) -> None:
        self.parent = parent
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # bound before the imports: a worker that asks meanwhile waits in the backlog
        self.listener.bind(path)
        self.listener.listen(128)
        self.cwd = os.getcwd()
        self.import_env = {k: os.environ.get(k) for k in IMPORT_ENV}
        self.children: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        # a child's exit wakes the loop (SIGCHLD writes a byte here), so its supervisor
        # hears of it at once rather than at the next timeout
        self.wakeup_r, self.wakeup_w = socket.socketpair()
        for end in (self.wakeup_r, self.wakeup_w):
            end.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wakeup_w.fileno(), warn_on_full_buffer=False)

    def serve(self) -> None:
        for name in PRELOAD:
            importlib.import_module(name)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ)
        while os.getppid() == self.parent:  # the driver gone: nothing will ask any more
            for key, _ in self.selector.select(timeout=0.2):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self.wakeup_r:
                    with contextlib.suppress(BlockingIOError):
                        while self.wakeup_r.recv(4096):
                            pass
                else:  # the supervisor went away; its child is its own session's business
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    self.selector.unregister(conn)
                    conn.close()
                    self.children = {p: c for p, c in self.children.items() if c is not conn}
            self._reap()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
            request = json.loads(data)
            why = self._refusal(request, fds)
            if why:
                _send(conn, {"refused": why})
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                self._become_child(conn, fds)
                raise _Forked(request)  # out of the loop: main() runs the worker
            self.children[pid] = conn
            _send(conn, {"pid": pid})
            conn.setblocking(False)
            self.selector.register(conn, selectors.EVENT_READ)
        except (OSError, ValueError) as e:
            _send(conn, {"refused": f"bad request: {e}"})
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _refusal(self, request: dict[str, Any], fds: list[int]) -> str:
        env = request.get("env", {})
        if len(fds) != 3:
            return "stdin, stdout and stderr were not passed"
        if request.get("executable") != sys.executable:
            return f"another interpreter ({request.get('executable')})"
        if request.get("cwd") != self.cwd:
            return f"another working directory ({request.get('cwd')})"
        if any(env.get(k) != v for k, v in self.import_env.items()):
            return "another import environment (PYTHONPATH and the like)"
        return ""

    def _become_child(self, conn: socket.socket, fds: list[int]) -> None:
        """In the forked child: drop the zygote's sockets, take the caller's stdio and
        session."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self.listener.close()
        self.wakeup_r.close()
        self.wakeup_w.close()
        conn.close()
        for other in self.children.values():
            other.close()
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # _accept closes the received descriptors themselves

    def _reap(self) -> None:
        # every child, also those whose supervisor went away (no zombies left)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                conn.setblocking(True)
                _send(conn, {"status": os.waitstatus_to_exitcode(status)})
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(conn)
                conn.close()


class ZygoteChild:
    """A worker forked by the zygote, with the part of :class:`subprocess.Popen` the
    supervisor uses (``pid``, ``wait``, ``poll``); the exit status comes over the socket."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self.conn.settimeout(timeout)
        try:
            data = self.conn.recv(MAX_MESSAGE)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0, nothing yet
            raise subprocess.TimeoutExpired(["blockbuster.worker"], timeout or 0) from None
        except OSError:
            data = b""
        if not data:
            # no status (the zygote was killed): the child is not ours to wait for, so watch
            # it until it is gone and count it as killed
            print(
                f"blockbuster: the worker zygote is gone; the exit status of worker pid "
                f"{self.pid} is unknown and counted as killed",
                file=sys.stderr,
                flush=True,
            )
            self.returncode = self._wait_gone(timeout)
        else:
            self.returncode = int(json.loads(data)["status"])
        self.conn.close()
        return self.returncode

    def _wait_gone(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while Path(f"/proc/{self.pid}").exists():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["blockbuster.worker"], timeout or 0)
            time.sleep(0.05)
        return -signal.SIGKILL

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def spawn(path: str, argv: list[str], env: dict[str, str]) -> ZygoteChild | None:
    """Ask the zygote at ``path`` to fork ``python -m blockbuster.worker ARGS`` (``argv``
    as for :class:`subprocess.Popen`) with ``env``; None when it cannot (then start it)."""
    if argv[1:3] != ["-m", "blockbuster.worker"]:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        request = {"argv": argv[2:], "env": env, "cwd": os.getcwd(), "executable": argv[0]}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        conn.settimeout(120)  # the zygote's imports, on a loaded machine
        reply = json.loads(conn.recv(MAX_MESSAGE) or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in reply:
        conn.close()
        return None
    return ZygoteChild(conn, int(reply["pid"]))


class Zygote:
    """A zygote, shared by the daisy runs of a call: started by :meth:`start`, stopped by
    :meth:`close`.

    Its socket lies in a private temporary directory (mode 0700, a short path: a Unix
    socket's path is limited to about 100 bytes, which a run directory can exceed).
    """

    def __init__(self, proc: subprocess.Popen[bytes], folder: Path, log: Path) -> None:
        self.proc = proc
        self.folder = folder
        self.path = str(folder / SOCKET_NAME)
        self.log = log
        #: where :meth:`close` copies a log kept in :attr:`folder`, if it is not empty
        self.keep_log: Path | None = None

    @classmethod
    def start(cls, log: Path | None = None) -> Zygote | None:
        """Start a zygote (its own output to ``log``, else to a file in its folder, see
        :attr:`keep_log`); None when it cannot be started (the workers are then started as
        interpreters)."""
        try:
            folder = Path(tempfile.mkdtemp(prefix="bb-zygote-"))
            path = folder / SOCKET_NAME
            log = log if log is not None else folder / LOG_NAME
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "blockbuster.run.zygote", str(path), str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            finally:
                out.close()
        except OSError:
            return None
        # it binds before its imports: the wait is an interpreter's start, and the first
        # workers then find it (a zygote that does not come up only leaves them to Popen)
        deadline = time.monotonic() + START_S
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return cls(proc, folder, log)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        keep = self.keep_log
        if keep is not None and self.log.parent == self.folder and keep.parent.is_dir():
            with contextlib.suppress(OSError):
                if self.log.stat().st_size:
                    # appended: a resumed call keeps what an earlier attempt's zygote wrote
                    with open(self.log, "rb") as src, open(keep, "ab") as dst:
                        shutil.copyfileobj(src, dst)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> None:
    path, parent = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
    zygote = os.getpid()
    server = _Server(path, parent)
    rc = 0
    try:
        server.serve()
    except _Forked as forked:
        # the child: the worker, then the interpreter's own exit (atexit, threads joined)
        sys.exit(run_child(forked.request))
    except Exception:
        # written now, before the clean-up below looks at the log (a failed import, say)
        traceback.print_exc()
        sys.stderr.flush()
        rc = 1
    finally:
        if os.getpid() == zygote:
            folder = os.path.dirname(path)
            with contextlib.suppress(OSError):
                os.unlink(path)
            log = os.path.join(folder, LOG_NAME)
            with contextlib.suppress(OSError):
                if not os.path.getsize(log):  # one with something in it is left to be read
                    os.unlink(log)
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    sys.exit(rc)


if __name__ == "__main__":
    main(sys.argv[1:])
