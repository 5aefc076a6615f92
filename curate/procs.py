"""Child processes die with the process that started them; signals end a run cleanly.

Every place that starts processes (the process-pool executor and the Ray executor in
:mod:`curate.runner`, img2dataset in :mod:`curate.download`) uses this module, so a
SIGKILLed, SIGTERMed or Ctrl-C'd curate leaves no process behind:

* **In the child, where curate starts it** (:func:`worker_init` in a pool worker,
  :func:`prelude` at the top of a script another Python runs): Linux's
  ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL the child the moment its parent dies.
  A pool worker also ignores SIGINT and SIGTERM: a terminal's Ctrl-C reaches the whole
  process group, and the parent, not each worker, decides when workers stop.
* **A watchdog for the whole tree** (:func:`guard`): a small process (stdlib only) that
  holds the read end of a pipe whose write end only this process has. While the block
  runs, it records every process that became a descendant of this one since the block
  began, with its start time and its process group. When the pipe closes without the
  block having ended (the parent died: the kernel closes its end), it freezes
  (SIGSTOP) every recorded process still alive, its children and the members of any
  process group a recorded process leads, then SIGKILLs them all. That covers what no
  prctl in the child can: Ray's agents and actor workers, started by the raylet;
  img2dataset's own pool and logger processes; the multiprocessing resource tracker.
  When the block ends normally, whatever it started and left running is killed too
  (except the processes named in ``spare``), and the watchdog exits.
* **Process groups**: img2dataset runs in a session of its own
  (``start_new_session``), so the terminal's Ctrl-C reaches only curate, which then
  kills the whole group (:func:`kill_group`) before reporting the interrupt.
* **Signals** (:func:`handle_signals`, used by the CLI's ``main``): SIGTERM (and
  SIGINT) raise :class:`Interrupted`, a :class:`KeyboardInterrupt`, so every
  ``with``/``finally`` in the stack runs exactly as for Ctrl-C: the batch in flight
  rolls back, the run is marked ``interrupted``, children are stopped. The CLI then
  prints one line and exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

The watchdog reads ``/proc`` on Linux and ``ps`` elsewhere; where neither works, the
block runs unguarded and logs why.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger("curate.procs")

#: ``prctl`` option: the signal a process gets when its parent dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1
#: POSIX's SIGKILL (the name is missing where there is no such signal)
SIGKILL = int(getattr(signal, "SIGKILL", 9))


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (raised by :func:`handle_signals`' handler).

    A :class:`KeyboardInterrupt`, so everything that cleans up after Ctrl-C cleans up
    after SIGTERM the same way; ``signum`` says which signal it was."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 128 + its number."""
        return 128 + self.signum


def set_parent_death_signal(sig: int = SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``). Returns False where that does not exist.

    The signal follows the death of the parent *thread* that started this process, so
    curate starts children from the thread that stays for the run (the main thread)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        return bool(libc is not None and libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


_LIBC: list[Any] = []


def _libc() -> Any:
    """The C library, loaded once per process. ``find_library`` runs ``ldconfig`` in a
    subprocess, which a ``preexec_fn`` child (forked from a threaded parent) should not
    do at every start: the first call, in the parent, keeps the handle, and forked
    children inherit it."""
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def libc_name() -> str:
    """The C library's file name as this process found it (for a child's prelude)."""
    lib = _libc()
    return str(lib._name) if lib is not None else "libc.so.6"


def preexec_die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child dies with this process. The C
    library is loaded here, in the parent, so the forked child only calls ``prctl``."""
    _libc()
    return functools.partial(die_with_parent, os.getpid())


def die_with_parent(parent_pid: int) -> None:
    """In a child: die when ``parent_pid`` dies (see :func:`set_parent_death_signal`).
    A parent that is already gone (it died before this ran) ends this process now."""
    set_parent_death_signal(SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_init(parent_pid: int) -> None:
    """First thing in a pool worker: die with the parent, and leave SIGINT/SIGTERM to
    it (a terminal's Ctrl-C reaches every process of the group; the parent stops the
    workers itself, so they never print a KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent_pid)


def prelude(parent_pid: int) -> str:
    """Python source (stdlib only) that a child script run by *another* Python (one
    that cannot import curate, e.g. img2dataset's venv) puts first: the same as
    :func:`die_with_parent`."""
    return (
        "import ctypes as _c, os as _os, signal as _s, sys as _sys\n"
        "if _sys.platform.startswith('linux'):\n"
        "    try:\n"
        f"        _c.CDLL({libc_name()!r}).prctl("
        f"{PR_SET_PDEATHSIG}, int(_s.SIGKILL), 0, 0, 0)\n"
        "    except (OSError, AttributeError):\n"
        "        pass\n"
        f"if _os.getppid() != {int(parent_pid)}:\n"
        "    _os._exit(1)\n"
    )


def kill_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL the process group that ``proc`` leads (it was started with
    ``start_new_session=True``) and reap ``proc``."""
    if proc.returncode is None:  # not reaped yet: its pid still names its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, SIGKILL)
            else:  # no process groups here
                proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


# -- signals ------------------------------------------------------------------------
#: the signals the handler of :func:`handle_signals` received, newest last
_received: list[int] = []


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def as_interrupt(e: BaseException) -> Interrupted | None:
    """The interrupt behind ``e``, or None. ``e`` itself when it is one; otherwise, an
    :class:`Interrupted` for the signal received while ``e`` was raised: DuckDB runs
    the signal handler during a query and replaces its exception by ``RuntimeError:
    Query interrupted``, and a pool or Ray may fail in their own way. A DuckDB query
    interrupted with no signal recorded (Ctrl-C outside the CLI) counts as SIGINT."""
    if isinstance(e, Interrupted):
        return e
    if _received:
        return Interrupted(_received[-1])
    if isinstance(e, RuntimeError) and str(e) == "Query interrupted":
        return Interrupted(signal.SIGINT)
    return None


@contextlib.contextmanager
def handle_signals(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """For the body: SIGINT and SIGTERM raise :class:`Interrupted`; the previous
    handlers come back afterwards. Does nothing outside the main thread (Python
    delivers signals only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise_interrupted) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def keep_signal_handlers(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Put back the handlers of ``signums`` that the body replaced (``ray.init`` installs
    a SIGTERM handler that calls ``sys.exit``, which would skip the interrupt path)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in signums}
    try:
        yield
    finally:
        for s, h in saved.items():
            if h is not None and signal.getsignal(s) is not h:
                signal.signal(s, h)


# -- the watchdog -------------------------------------------------------------------
#: The watchdog process's program (run with ``python -I -S``: stdlib only, no site).
#: argv: parent pid, seconds between scans. stdin: the pipe (EOF = the parent died;
#: ``k PID PID...`` = the block ended: kill leftovers except those pids). stdout: one
#: ``r`` once it has taken the baseline (processes that existed before the block).
_WATCHDOG = r"""
import os, select, signal, subprocess, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
parent, every = int(sys.argv[1]), float(sys.argv[2])
me = os.getpid()

def scan():
    # {pid: (ppid, pgid, start)}; start tells a pid from a later process reusing it
    out = {}
    if os.path.isdir('/proc/self'):
        for name in os.listdir('/proc'):
            if not name.isdigit():
                continue
            try:
                with open('/proc/' + name + '/stat', 'rb') as f:
                    data = f.read()
            except OSError:
                continue
            rest = data[data.rindex(b')') + 2:].split()
            if rest[0] in (b'Z', b'X'):
                continue  # a zombie is dead already
            out[int(name)] = (int(rest[1]), int(rest[2]), int(rest[19]))
        return out
    ps = subprocess.run(['ps', '-A', '-o', 'pid=', '-o', 'ppid=', '-o', 'pgid=', '-o', 'stat=', '-o', 'lstart='],
                        capture_output=True, text=True, check=True).stdout
    for line in ps.splitlines():
        f = line.split(None, 4)
        if len(f) == 5 and not f[3].startswith('Z'):
            out[int(f[0])] = (int(f[1]), int(f[2]), f[4])
    return out

def below(table, roots):
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), list(roots)
    while todo:
        for k in kids.get(todo.pop(), ()):
            if k not in seen and k != me:  # not this watchdog, nor its ps
                seen.add(k)
                todo.append(k)
    return seen

table = scan()
baseline = below(table, [parent])
known, groups = {}, {}  # pid -> start; pgid -> leader's start

def record(table):
    for pid in below(table, [parent]) - baseline:
        ppid, pgid, start = table[pid]
        known.setdefault(pid, start)
        if pgid == pid:
            groups.setdefault(pgid, start)

sys.stdout.write('r')
sys.stdout.flush()
spare = set()
while True:
    ready, _, _ = select.select([0], [], [], every)
    if ready:
        line = sys.stdin.readline()
        if line.startswith('k'):
            spare = {int(p) for p in line.split()[1:]}
            try:
                record(scan())
            except Exception:
                pass
        break
    try:
        record(scan())
    except Exception:
        pass

# Freeze what is ours and still alive, then its children and its groups' members
# (frozen processes cannot fork), then kill everything frozen.
targets = set()
for _ in range(20):
    table = scan()
    new = {p for p, (_, _, st) in table.items() if known.get(p) == st}
    # a group's members started after its leader (ps's start times do not order)
    new |= {p for p, (_, g, st) in table.items() if g in groups and (not isinstance(st, int) or st >= groups[g])}
    new |= below(table, targets | new)
    new -= targets | spare | {me}
    if not new:
        break
    for p in new:
        try:
            os.kill(p, signal.SIGSTOP)
        except OSError:
            pass
    targets |= new
for p in targets:
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
"""

#: seconds between the watchdog's scans of the process table
SCAN_SECONDS = 0.2


@contextlib.contextmanager
def guard(what: str, spare: Iterable[int] | None = None) -> Iterator[None]:
    """Every process started inside the block (and its descendants) dies with this
    process, and none outlives the block: see the module docstring. ``what`` names the
    block in the log; ``spare`` lists pids to leave running when the block ends normally."""
    try:
        dog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(SCAN_SECONDS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               close_fds=True)
    except OSError as e:
        log.warning("%s runs without a process watchdog: %s", what, e)
        yield
        return
    assert dog.stdout is not None and dog.stdin is not None
    if dog.stdout.read(1) != b"r":  # it could not read the process table
        dog.wait()
        log.warning("%s runs without a process watchdog: it could not list processes", what)
        yield
        return
    dog.stdout.close()
    log.debug("%s: watchdog %d guards the processes it starts", what, dog.pid)
    try:
        yield
    finally:
        keep = sorted({int(p) for p in (spare or ())} | _resource_tracker())
        with contextlib.suppress(BrokenPipeError, OSError):
            dog.stdin.write(("k " + " ".join(map(str, keep)) + "\n").encode())
            dog.stdin.close()
        try:
            dog.wait(30)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait()


def _resource_tracker() -> set[int]:
    """The pid of multiprocessing's resource tracker, which a pool starts once per
    process and reuses: left running at a normal end (killing it makes the next pool
    warn), killed with everything else when this process dies."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    return {pid} if isinstance(pid, int) else set()


__all__ = ["Interrupted", "as_interrupt", "die_with_parent", "preexec_die_with_parent", "guard", "handle_signals", "keep_signal_handlers", "kill_group",
           "prelude", "set_parent_death_signal", "worker_init"]
