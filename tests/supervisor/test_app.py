"""Applications as real processes: signals, orderly shutdown, exit statuses."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from supervisor import ExitStatus

ROOT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent("""
    import sys
    from typing import Any
    from supervisor import Actor, ChildSpec, SupervisorSpec, run_application

    class Loud(Actor):
        async def on_start(self) -> None:
            print("ready", flush=True)
            if sys.argv[2] == "crash":
                self.send_after(0.01, "die")
            if sys.argv[2] == "done":
                self.send_after(0.01, "finish")

        async def handle_info(self, msg: Any) -> None:
            if msg == "die":
                raise RuntimeError("always")
            self.tree.shutdown(4, "finished with failed items")

        async def on_stop(self, reason: Any) -> None:
            print("stopped in order", flush=True)

    spec = SupervisorSpec("app", intensity=1, period=5.0, children=[ChildSpec("w", Loud)])
    sys.exit(run_application(spec, backend=sys.argv[1]))
""")


def start(tmp_path: Path, backend: str, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), backend, mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_leads_to_orderly_shutdown_and_its_status(
    tmp_path: Path, anyio_backend: str, signum: int, status: int
) -> None:
    """SIGINT/SIGTERM stop the tree in order and exit 130/143."""
    proc = start(tmp_path, anyio_backend, "wait")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)  # the signal receiver is installed right after the start
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == status, err
    assert out == "stopped in order\n"


def test_crash_exits_1_with_a_clear_message(tmp_path: Path, anyio_backend: str) -> None:
    """A root that gives up exits 1 and says why on stderr."""
    proc = start(tmp_path, anyio_backend, "crash")
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitStatus.CRASH == 1
    assert "application crashed" in err
    assert "supervisor app reached its restart intensity (1 restarts in 5 s)" in err


def test_requested_exit_status_is_returned(tmp_path: Path, anyio_backend: str) -> None:
    """tree.shutdown(4) ends the application in order with status 4."""
    proc = start(tmp_path, anyio_backend, "done")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitStatus.FAILED_ITEMS == 4, err
    assert out == "ready\nstopped in order\n"


def test_example_tree_runs_and_shows_restarts_and_escalation(anyio_backend: str) -> None:
    """The bundled example runs on both backends, logs restarts and an escalation, exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/supervision_tree.py"), "--backend", anyio_backend,
         "--seconds", "1.5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "restarted" in proc.stderr
    assert "intensity_exceeded" in proc.stderr
    assert "path=app/fragile" in proc.stderr
