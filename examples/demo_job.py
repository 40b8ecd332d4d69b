"""The main job: scrape the bundled live-scores demo site, with faults on.

    python examples/demo_job.py [--matches 100] [--tabs 4] [--no-faults] [--job-id ID]

It starts the demo site (its own process, on 127.0.0.1), and runs a scrape job over every
match section (3 items a match) through the real supervision tree, with the site's faults
on: one-off 500s, 429s with Retry-After, slow pages, permanent 404s, pages whose renderer
is crashed, and two kill -9s of the browser mid-run. Results go to
``runs/<job id>/results.jsonl``, final failures to ``failures.jsonl``. It prints what
happened and exits 4, because the permanent 404s end as failed items (0 with --no-faults).

A user's own job looks the same: items with a ``key`` (and whatever the scrape needs),
an async ``scrape(page, item) -> dict``, and ``run_job``. Running it again with the same
``--job-id`` resumes: finished items are not scraped again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the examples package importable
    sys.path.insert(0, str(ROOT))

from actors import Faults, Job, run_job  # noqa: E402
from examples.demo_site import DemoSite, SiteOptions, scrape_demo  # noqa: E402
from supervisor import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, default=100, help="matches on the site (x3 items)")
    parser.add_argument("--tabs", type=int, default=4)
    parser.add_argument("--no-faults", action="store_true", help="a clean run (exit status 0)")
    parser.add_argument("--job-id", default=None, help="resume this job if it exists")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    faulty = not args.no_faults
    site = SiteOptions(matches=args.matches, seed=args.seed,
                       fail_500=0.1 if faulty else 0.0, fail_429=0.05 if faulty else 0.0,
                       retry_after=1.0, slow=0.02 if faulty else 0.0, slow_seconds=2.0,
                       not_found=3 if faulty else 0, crash=2 if faulty else 0)
    total = args.matches * 3
    faults = Faults(crash_marker=faulty,
                    kill_browser_after=(total // 3, 2 * total // 3) if faulty else ())
    job_id = args.job_id or time.strftime("demo-%Y%m%d-%H%M%S")
    with DemoSite(site) as demo:
        print(f"demo site at {demo.url}; job {job_id}: {total} items, {args.tabs} tabs,"
              f" faults {'on' if faulty else 'off'}", file=sys.stderr)
        job = Job(id=job_id, items=demo.items(), scrape=scrape_demo, tabs=args.tabs,
                  output_dir=args.output_dir, faults=faults)
        return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
