"""Helpers for the tests that scrape the demo site with real jobs: keys and items of a
site, its request log, the job's output files, and a bounded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson

from actors import Job, RetryPolicy, run_job_async
from actors.job import JobResult
from examples.demo_site import DemoSite, all_keys


def clean_keys(site: DemoSite) -> list[str]:
    """The site's keys without any fault, in site order."""
    faulty = set().union(*site.plan().values())
    return [key for key in all_keys(site.options.matches) if key not in faulty]


def items_for(site: DemoSite, keys: list[str]) -> list[dict[str, str]]:
    """The demo items of ``keys``, in that order."""
    by_key = {item["key"]: item for item in site.items()}
    return [by_key[key] for key in keys]


def visits(site: DemoSite, key: str) -> list[dict[str, Any]]:
    """The server's log entries for the section page of ``key``, oldest first."""
    return [r for r in site.requests() if r["key"] == key]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines output file (none if it was never written)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def by_key(path: Path) -> dict[str, dict[str, Any]]:
    """The records of an output file by item key."""
    return {record["key"]: record for record in read_jsonl(path)}


def fast_retry(max_attempts: int) -> RetryPolicy:
    """Retries 50 ms apart, doubling, without jitter."""
    return RetryPolicy.for_testing(base_delay=0.05, max_delay=0.5, max_attempts=max_attempts,
                                   jitter_enabled=False)


async def run(job: Job, limit: float = 50.0) -> JobResult:
    """Run ``job`` to its end; the job must end by itself within ``limit`` seconds."""
    with anyio.fail_after(limit):
        return await run_job_async(job)
