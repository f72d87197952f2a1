"""One bundle run as a process: it owns its output folders, it ends its MLflow run whatever happens, and the last
line it prints on failure is the cause.

A bundle config starts a :class:`RunGuard` first in its ``initialize`` and finishes it last in its ``finalize``::

    "guard": {"_target_": "frepa_monai.guard.RunGuard", "folders": ["@ckpt_dir", "@output_dir"], ...},
    "initialize": ["$@guard.start()", ...],
    "finalize": [..., "$@guard.finish()"]

- **A lock per output folder.** ``.<folder name>.lock`` beside the folder (so that it survives the folder being
  replaced by a finished run's outputs) holds the running process's pid, host, start time
  and command. A second run in the same folder stops at once and names that process; a lock whose process no
  longer runs (a killed run) is taken over with a warning, and that run's MLflow run is ended as KILLED.
- **MLflow status.** A run that fails is ended as FAILED, one interrupted (Ctrl-C, ``SIGTERM``) as KILLED; MONAI's
  ``MLFlowHandler`` ends only completed runs (FINISHED).
- **The last line is the cause.** MONAI wraps every error of a config in "Failed to evaluate ..." or "Failed to
  instantiate component ...", so the real cause sits mid-traceback. After the traceback, the guard prints the
  innermost error that is not such a wrapper: the one whose message names the file or key.

Only rank 0 of a distributed run locks the folders (the ranks share them).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["lock_path", "RunInUseError", "RunGuard", "root_cause", "cause_line", "default_run_name"]

logger = logging.getLogger(__name__)

_WRAPPERS = ("Failed to evaluate", "Failed to instantiate component")  # MONAI's wrappers of config errors


class RunInUseError(RuntimeError):
    """An output folder is locked by another running process."""


def default_run_name() -> str:
    """A run name unique to this invocation: ``run_<date>_<time>_<pid>`` (MONAI's ``MLFlowHandler`` would otherwise
    append to any unfinished run of the experiment)."""
    return f"run_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"


def root_cause(error: BaseException) -> BaseException:
    """The first error of ``error``'s chain (``raise ... from``, or raised while handling another) that is not one of
    MONAI's config wrappers."""
    seen = set()
    while id(error) not in seen and str(error).startswith(_WRAPPERS):
        seen.add(id(error))
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return error


def cause_line(error: BaseException) -> str:
    """One line for the end of a failed run: the root cause's type and the first line of its message."""
    cause = root_cause(error)
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else ""
    more = " (details above)" if len(lines) > 1 else ""
    return f"{type(cause).__name__}: {text}{more}" if text else type(cause).__name__


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of output folder ``folder``: ``.<name>.lock`` beside it."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunGuard:
    """Lock a bundle run's output folders, end its MLflow run as FAILED or KILLED when it does not complete, and
    print the cause of a failure as the last line.

    Args:
        folders: the folders the run writes (``ckpt_dir``, ``output_dir``); created if missing.
        tracking_uri, experiment_name, run_name: the run's MLflow run, as given to MONAI's ``MLFlowHandler``
            (``tracking_uri`` ``None``: no MLflow).
        mlflow: whether to end the run's MLflow run (a run of ``run_name`` in the store, started by MONAI's
            ``--tracking mlflow``) as FAILED or KILLED; nothing happens when there is no such run or store.
    """

    def __init__(
        self,
        folders: Sequence[str],
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        mlflow: bool | str = True,
    ) -> None:
        from monai.utils import str2bool

        self.folders = [Path(f) for f in folders]
        use_mlflow = str2bool(mlflow) and tracking_uri is not None and run_name is not None
        self.mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name, "run_name": run_name}
        self.mlflow = self.mlflow if use_mlflow else None
        self._locks: list[Path] = []
        self._previous_hook = None
        self._sigterm = False
        self._done = False

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> RunGuard:
        """Install the error report and the ``SIGTERM`` handler, then lock every folder (rank 0 only)."""
        earlier = getattr(sys.excepthook, "__self__", None)  # a guard of an earlier run in this process
        self._previous_hook = earlier._previous_hook if isinstance(earlier, RunGuard) else sys.excepthook
        sys.excepthook = self._report
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
            self._sigterm = True
        atexit.register(self._at_exit)
        if _rank() == 0:
            for folder in self.folders:
                self._lock(folder)
        return self

    def finish(self) -> None:
        """The run completed: release the locks and stand down."""
        self._done = True
        self._release()
        atexit.unregister(self._at_exit)
        if sys.excepthook == self._report:
            sys.excepthook = self._previous_hook or sys.__excepthook__
        if self._sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._sigterm = False

    def _report(self, exc_type, error, traceback) -> None:
        """``sys.excepthook``: end the MLflow run, release the locks, print the traceback, then the cause."""
        self._end(error)
        (self._previous_hook or sys.__excepthook__)(exc_type, error, traceback)
        print(f"\n{cause_line(error)}", file=sys.stderr, flush=True)

    def _at_exit(self) -> None:
        """A run that neither finished nor reached the error report (an in-process caller caught its error)."""
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        if self.mlflow is not None and _rank() == 0:
            end_mlflow_run(**self.mlflow, status=status)
        self._release()

    # -- locks -----------------------------------------------------------------------------------------------------
    def _lock(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = lock_path(folder)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
            "mlflow": self.mlflow,
        }
        written = path.with_name(f"{path.name}.{os.getpid()}")
        written.write_text(json.dumps(record))
        try:
            for _ in range(3):
                try:
                    os.link(written, path)  # atomic, and fails if the lock exists: never a half-written lock
                except FileExistsError:
                    self._take_over(path, folder)
                    continue
                self._locks.append(path)
                return
        finally:
            written.unlink(missing_ok=True)
        raise RunInUseError(f"{folder} is locked ({path}) and the lock could not be taken over.")

    def _take_over(self, path: Path, folder: Path) -> None:
        """Remove the lock at ``path`` of ``folder`` if its process no longer runs; raise if it does."""
        try:
            holder = json.loads(path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, socket.gethostname()  # unreadable: a writer killed mid-write
        if pid is not None and pid != os.getpid():
            if host != socket.gethostname():
                raise RunInUseError(
                    f"{folder} is in use by process {pid} on host {host} (since {holder.get('started')}: "
                    f"{holder.get('command')}); remove {path} if that run no longer runs."
                )
            if _alive(pid):
                raise RunInUseError(
                    f"{folder} is in use by process {pid} (since {holder.get('started')}: "
                    f"{holder.get('command')}); wait for it to end, or give this run another --bundle_root."
                )
        if pid is None:
            what = "a run that was killed while writing it (unreadable)"
        elif pid == os.getpid():
            what = "this process's earlier run"
        else:
            what = f"process {pid}, which no longer runs"
        logger.warning(f"taking over the stale lock {path} of {what}: its last epoch may be lost")
        if isinstance(holder.get("mlflow"), dict) and pid != os.getpid():
            end_mlflow_run(**holder["mlflow"], status="KILLED")
        path.unlink(missing_ok=True)

    def _release(self) -> None:
        for path in self._locks:
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass
        self._locks = []


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def end_mlflow_run(tracking_uri: str, experiment_name: str | None, run_name: str, status: str) -> None:
    """End the RUNNING MLflow runs named ``run_name`` in ``experiment_name`` with ``status`` (FAILED, KILLED).

    Nothing happens when the tracking store does not exist (the run failed before MLflow started)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        return
    for attempt in range(3):  # SQLite answers "database is locked" while another writer holds it: retry
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
            experiment = client.get_experiment_by_name(experiment_name or "Default")
            if experiment is None:
                return
            running = f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'"
            runs = client.search_runs([experiment.experiment_id], filter_string=running)
            for run in runs:
                client.set_terminated(run.info.run_id, status)
                logger.warning(f"MLflow run '{run_name}' ({run.info.run_id}) ended as {status}")
            return
        except Exception as e:  # the report of a failure must not fail itself
            tried = f"({attempt + 1}/3)"
            logger.warning(f"could not end MLflow run '{run_name}' in {tracking_uri} as {status} {tried}: {e}")
            time.sleep(1.0)
