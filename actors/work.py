"""The work queue: items, leases to tabs, retries at not-before times, dedup.

* Idle tabs say ``("ready", ref)``; the queue monitors each tab and pushes it a
  :class:`~actors.records.Lease`. A tab that dies (``Down``) gives its lease back: the
  attempt counts as a transient failure and the item is retried.
* A retry waits in a heap until its not-before time; tabs never sleep through a backoff
  while other items wait. One timer wakes the queue at the earliest due time.
* A success or a final failure is sent to the checkpoint actor, the one writer of
  outcomes. The lease is released -- and the item counts as done -- only when the
  checkpoint actor says the record is durable. Completed keys are never handed out again.
* Every lease has a deadline (``attempt_timeout`` plus a grace period); a tab holding an
  expired lease is killed and restarted by its supervisor, and the item retried.
* ``pause``/``resume`` stop and restart handing out leases; ``drain(timeout)`` pauses and
  waits for in-flight items, then takes the rest back.
* When every item is done or failed for good, the queue asks the tree to shut down with
  exit status 0, or 4 when some items failed.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from supervisor import Actor, ActorRef, Down, ExitStatus, MonitorRef, Timer, new_correlation_id

from .checkpoint import item_digest
from .classify import Classification, FailureCategory, RecoveryAction, severity_for
from .records import Attempt, FailureEvent, FailureRecord, Lease, ResultRecord
from .retry import decide

if TYPE_CHECKING:
    from .job import JobRuntime

__all__ = ["WorkQueue", "drain"]

_log = structlog.get_logger("actors.work")
LEASE_GRACE = 15.0


class _Tick:
    pass


class WorkQueue(Actor):
    """The job's item queue; see the module docstring."""

    def __init__(self, runtime: JobRuntime) -> None:
        self.runtime = runtime
        self.items: dict[str, Mapping[str, Any]] = {}
        self.ready: deque[str] = deque()
        self.delayed: list[tuple[float, int, str]] = []
        self.leases: dict[int, tuple[Lease, ActorRef]] = {}
        self.writing: set[str] = set()
        self.idle: deque[ActorRef] = deque()
        self.watched: dict[ActorRef, MonitorRef] = {}
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.correlation: dict[str, str] = {}
        self.retries = 0
        self.finished_count = 0
        self.finished_this_run = 0
        self.paused = False
        self.finished = False
        self._next_lease = 0
        self._seq = 0
        self._timer_at = float("inf")
        self._timer: Timer | None = None
        self._killed: set[int] = set()
        self._rng = random.Random()
        self._started = time.monotonic()
        self._last_progress = 0.0

    # -- start ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        checkpoint = self.tree.whereis("checkpoint")
        done, failed = await checkpoint.call(("known_keys",), timeout=60)
        digests = await checkpoint.call(("digests",), timeout=60)
        self.done, self.failed = set(done), set(failed)
        changed = 0
        for key, item in self.runtime.items.items():
            self.items[key] = item
            if key in self.done or key in self.failed:
                self.finished_count += 1
                old = digests.get(key)
                if old is not None and old != item_digest(item):
                    changed += 1
                    if changed <= 20:
                        _log.warning("a finished item changed (e.g. its URL); it is not"
                                     " scraped again", key=key)
            else:
                self.ready.append(key)
        if changed > 20:
            _log.warning("finished items that changed are not scraped again", count=changed)
        _log.info("work queue ready", total=len(self.items), pending=len(self.ready),
                  already_done=len(self.done), already_failed=len(self.failed))
        self._schedule(time.monotonic() + self.runtime.job.progress_interval)
        self._maybe_finish()

    # -- messages ------------------------------------------------------------------------

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("ready", ActorRef() as tab):
                self._tab_ready(tab)
            case ("outcome", ActorRef() as tab, Attempt() as report):
                await self._outcome(tab, report)
            case ("durable", list() as keys):
                self._durable(keys)
            case _:
                raise ValueError(f"work queue: unexpected message {msg!r}")
        self._dispatch()

    async def handle_call(self, msg: Any) -> Any:
        match msg:
            case ("stats",):
                return self.stats()
            case ("pause",):
                self.paused = True
                return None
            case ("resume",):
                self.paused = False
                self._dispatch()
                return None
            case ("in_flight",):
                return len(self.leases) + len(self.writing)
            case ("revoke",):
                return self._revoke()
        raise ValueError(f"work queue: unknown call {msg!r}")

    async def handle_info(self, msg: Any) -> None:
        if isinstance(msg, Down):
            self._tab_down(msg)
        elif isinstance(msg, _Tick):
            self._timer_at = float("inf")
            self._timer = None
            self._expire_leases()
            self._release_due()
            self._progress()
            if self.delayed:
                self._schedule(self.delayed[0][0])
            live = [lease.deadline for lease, _ in self.leases.values()
                    if lease.id not in self._killed]
            if live:
                self._schedule(min(live))
            if not self.finished:
                self._schedule(time.monotonic() + self.runtime.job.progress_interval)
        self._dispatch()

    # -- tabs ----------------------------------------------------------------------------

    def _tab_ready(self, tab: ActorRef) -> None:
        if not tab.alive:
            return
        if tab not in self.watched:
            self.watched[tab] = self.monitor(tab)
        if tab not in self.idle:
            self.idle.append(tab)

    def _tab_down(self, down: Down) -> None:
        self.watched.pop(down.ref, None)
        try:
            self.idle.remove(down.ref)
        except ValueError:
            pass
        for lease_id, (lease, tab) in list(self.leases.items()):
            if tab == down.ref:
                del self.leases[lease_id]
                self._killed.discard(lease_id)
                reason = down.reason if isinstance(down.reason, str) else repr(down.reason)
                self._retry_or_fail(lease, Attempt(
                    lease_id, lease.key, False, error_type="TabExited",
                    message=f"tab {tab.path} exited ({reason}) holding the item",
                    transient=True, category=FailureCategory.BROWSER,
                    reason="tab exited"))

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for lease, tab in list(self.leases.values()):
            if lease.deadline <= now and tab.alive and lease.id not in self._killed:
                _log.warning("lease expired; killing its tab", key=lease.key, tab=tab.path,
                             correlation_id=lease.correlation_id)
                self._killed.add(lease.id)
                tab.kill()  # its Down gives the lease back

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.paused or self.finished:
            return
        stop_after = self.runtime.job.stop_after
        while self.idle and self.ready:
            if stop_after is not None and (self.finished_this_run + len(self.leases)
                                           + len(self.writing)) >= stop_after:
                return
            key = self.ready.popleft()
            if key in self.done or key in self.failed or key in self.writing:
                continue
            if any(lease.key == key for lease, _ in self.leases.values()):
                continue
            tab = self.idle.popleft()
            if not tab.alive:
                self.ready.appendleft(key)
                continue
            self._next_lease += 1
            attempt = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempt
            cid = self.correlation.setdefault(key, new_correlation_id())
            deadline = time.monotonic() + self.runtime.job.attempt_timeout + LEASE_GRACE
            lease = Lease(self._next_lease, key, self.items[key], attempt, cid, deadline)
            try:
                tab.cast_nowait(lease)
            except Exception:
                self.attempts[key] = attempt - 1
                self.ready.appendleft(key)
                continue
            self.leases[lease.id] = (lease, tab)
            self._schedule(deadline)

    def _revoke(self) -> int:
        """Take every lease back (after a drain deadline); late reports are ignored."""
        revoked = 0
        for lease, _tab in self.leases.values():
            self.attempts[lease.key] = lease.attempt - 1
            self.ready.appendleft(lease.key)
            revoked += 1
        self.leases.clear()
        return revoked

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, key = heapq.heappop(self.delayed)
            self.ready.append(key)

    def _schedule(self, at: float) -> None:
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.send_after(max(0.0, at - time.monotonic()), _Tick())

    # -- outcomes ------------------------------------------------------------------------

    async def _outcome(self, tab: ActorRef, report: Attempt) -> None:
        if not report.restart_tab:
            self._tab_ready(tab)
        entry = self.leases.pop(report.lease_id, None)
        if entry is None:
            return  # the lease was already taken back (expired, revoked, or its tab died)
        lease, _ = entry
        if report.ok:
            assert report.data is not None
            record = ResultRecord(lease.key, report.data, lease.attempt, lease.correlation_id)
            self.writing.add(lease.key)
            await self.tree.whereis("checkpoint").cast(
                ("result", record, item_digest(self.items[lease.key])))
        else:
            self._retry_or_fail(lease, report)

    def _retry_or_fail(self, lease: Lease, report: Attempt) -> None:
        job = self.runtime.job
        verdict = Classification(transient=report.transient, category=report.category,
                                 rate_limited=report.rate_limited, status=report.status,
                                 reason=report.reason or report.error_type)
        decision = decide(job.retry, lease.attempt, verdict, report.retry_after, self._rng)
        action = RecoveryAction.RETRY if decision.retry else RecoveryAction.SKIP
        self._report_failure(lease, report, verdict, action, final=not decision.retry,
                             why=decision.reason, delay=decision.delay)
        if decision.retry:
            self.retries += 1
            self._seq += 1
            heapq.heappush(self.delayed, (time.monotonic() + decision.delay, self._seq, lease.key))
            self._schedule(self.delayed[0][0])
            return
        reason = report.reason or decision.reason
        if decision.reason in ("attempts_exhausted", "retry_after_too_long"):
            reason = f"{decision.reason}: {reason}"
        record = FailureRecord(lease.key, report.category, reason, report.error_type,
                               report.message, report.stack, lease.attempt,
                               lease.correlation_id, report.status)
        self.writing.add(lease.key)
        self.tree.whereis("checkpoint").cast_nowait(
            ("failure", record, item_digest(self.items[lease.key])))

    def _report_failure(self, lease: Lease, report: Attempt, verdict: Any,
                        action: RecoveryAction, final: bool, why: str, delay: float) -> None:
        event = FailureEvent(
            severity=severity_for(verdict, final), category=report.category,
            source=f"tab:{report.key}", message=report.message or report.error_type,
            recovery_action=action, correlation_id=lease.correlation_id,
            context={"key": lease.key, "attempt": lease.attempt, "reason": report.reason,
                     "decision": why, "delay": round(delay, 3), "status": report.status,
                     "error_type": report.error_type, "final": final},
            stack_trace=report.stack, resolution_time=report.elapsed)
        try:
            self.tree.whereis("failures").cast_nowait(("failure", event))
        except Exception:
            _log.warning("failure not recorded by the failures actor", key=lease.key,
                         correlation_id=lease.correlation_id, message=event.message)

    def _durable(self, entries: list[tuple[str, str]]) -> None:
        for kind, key in entries:
            self.writing.discard(key)
            target = self.done if kind == "result" else self.failed
            if key not in target and key in self.items:
                self.finished_count += 1
                self.finished_this_run += 1
            target.add(key)
        self.runtime.faults.after_durable(self, len(self.done))
        stop_after = self.runtime.job.stop_after
        if stop_after is not None and self.finished_this_run >= stop_after and not self.finished:
            self.finished = True
            self._progress(force=True)
            self.tree.shutdown(int(ExitStatus.SIGINT), f"stop_after={stop_after} reached")
            return
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finished or self.finished_count < len(self.items):
            return
        if self.writing or self.leases:
            return
        self.finished = True
        self._progress(force=True)
        status = ExitStatus.FAILED_ITEMS if self.failed else ExitStatus.OK
        self.tree.shutdown(int(status), "all items done")

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for progress lines and the final summary."""
        return {"total": len(self.items), "done": len(self.done), "failed": len(self.failed),
                "pending": len(self.ready) + len(self.delayed), "in_flight": len(self.leases),
                "writing": len(self.writing), "retries": self.retries, "paused": self.paused}

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.runtime.job.progress_interval:
            return
        self._last_progress = now
        stats = self.stats()
        elapsed = now - self._started
        _log.info("progress", rate=round(stats["done"] / elapsed, 2) if elapsed else 0.0,
                  elapsed=round(elapsed, 1), **stats)
        self.runtime.progress(stats)


async def drain(work: ActorRef, timeout: float) -> bool:
    """Pause ``work`` and wait up to ``timeout`` s for in-flight items to end.

    Returns True if they all ended; otherwise the remaining leases are taken back (their
    items return to the queue, late reports are ignored) and False is returned. The queue
    stays paused until ``("resume",)``.
    """
    await work.call(("pause",))
    with anyio.move_on_after(timeout):
        while await work.call(("in_flight",)):  # noqa: ASYNC110 -- polls another actor
            await anyio.sleep(0.05)
        return True
    await work.call(("revoke",))
    return False
