"""Your own job: items, a TabActor subclass (or a plain scrape function), run_job.

    python examples/own_job.py [--job-id my-league] [--matches 10]

The tab below prepares each page once (a cookie, and a route that blocks images) and
scrapes one item at a time. Everything else -- retries with backoff, error pages judged at
once, restarts of crashed tabs and browsers, durable results, resume -- comes from the
runtime. For this example the items point at the bundled demo site; yours point anywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the examples package importable
    sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, Route  # noqa: E402

from actors import Job, RetryPolicy, TabActor, run_job  # noqa: E402
from examples.demo_site import DemoSite, SiteOptions  # noqa: E402
from supervisor import configure_logging  # noqa: E402


class MatchTab(TabActor):
    """Scrapes the score and teams of one match section."""

    async def prepare(self, page: Page) -> None:
        await page.context.add_cookies([{"name": "consent", "value": "yes",
                                         "url": "http://127.0.0.1"}])

        async def no_images(route: Route) -> None:
            await route.abort()

        await page.route("**/*.{png,jpg,jpeg,gif,webp}", no_images)

    async def scrape(self, page: Page, item: dict[str, Any]) -> dict[str, Any]:
        await page.goto(item["url"], wait_until="domcontentloaded")
        content = page.locator("#content[data-ready='1']")
        await content.wait_for()
        return {"title": await page.title(), "text": (await content.inner_text())[:200]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", default="my-league")
    parser.add_argument("--matches", type=int, default=10)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    with DemoSite(SiteOptions(matches=args.matches)) as site:
        items = [{"key": item["key"], "url": item["url"]} for item in site.items()]
        job = Job(id=args.job_id, items=items, tab=MatchTab, tabs=2,
                  retry=RetryPolicy(name="quick", max_attempts=3, base_delay=0.5),
                  output_dir=args.output_dir)
        return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
