#!/usr/bin/env python3
"""Set up the project on a fresh machine, then run the demo job or the test suite.

    python3 dev.py demo [ARGS...]   scrape the bundled demo site with faults on
    python3 dev.py test [ARGS...]   run the whole test suite (ARGS go to pytest)
    python3 dev.py setup            only prepare .venv and a Chromium

Only the standard library is used here, so this runs on a machine with nothing but
Python 3.11+. It creates ``.venv`` next to this file, installs the project with its
development extras (again only when ``pyproject.toml`` changed), and installs Debian's
``chromium`` through apt when no browser is found and apt is usable. Progress goes to
stderr; the exit status is the one of the command that was run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".scorewise-installed"
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> None:
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 -- this file runs before any venv exists
        sys.exit(f"[dev] Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[dev]"],
        cwd=ROOT)
    STAMP.write_text(want)


def browser_found() -> bool:
    if os.environ.get("SCOREWISE_BROWSER_PATH"):
        return True
    if any(Path(p).exists() for p in BROWSERS):
        return True
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", Path.home() / ".cache/ms-playwright"))
    return any(cache.glob("chromium*/chrome-linux*/chrome"))


def ensure_browser() -> None:
    if browser_found():
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        say("no Chromium found and apt-get is not usable as root here: install Chromium and set"
            " SCOREWISE_BROWSER_PATH to it; browser tests will fail until then")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run([apt, "update", "-qq"], env=env)
    run([apt, "install", "-y", "-qq", "chromium"], env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        ensure_venv()
        ensure_browser()
    except subprocess.CalledProcessError as exc:
        say(f"set-up failed: {exc}")
        return 2
    if cmd == "setup":
        return 0
    if cmd == "demo":
        job = ROOT / "examples" / "demo_job.py"
        if not job.exists():  # until the scraping job lands, the core's example runs
            job = ROOT / "examples" / "supervision_tree.py"
        args = [str(PY), str(job), *rest]
    else:
        args = [str(PY), "-m", "pytest", *rest]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
