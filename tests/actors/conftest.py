"""Shared fixtures of the scraping-runtime tests: the anyio backend and demo sites."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from examples.demo_site import DemoSite, SiteOptions

SiteFactory = Callable[[SiteOptions], DemoSite]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Playwright's async API runs on asyncio only."""
    return "asyncio"


def _sites(log_dir: Path) -> Iterator[SiteFactory]:
    started: list[DemoSite] = []

    def start(options: SiteOptions) -> DemoSite:
        if options.request_log is None:
            log = log_dir / f"requests-{len(started)}.jsonl"
            options = replace(options, request_log=str(log))
        site = DemoSite(options).start()
        started.append(site)
        return site

    yield start
    for site in started:
        site.stop()
        assert site.returncode == 0


@pytest.fixture
def demo_site(tmp_path: Path) -> Iterator[SiteFactory]:
    """``demo_site(SiteOptions(...))`` starts a demo site server process, with a request
    log under ``tmp_path``, and stops it after the test."""
    yield from _sites(tmp_path)


@pytest.fixture(scope="module")
def module_demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteFactory]:
    """Like ``demo_site``, for sites shared by the tests of a module."""
    yield from _sites(tmp_path_factory.mktemp("sites"))
