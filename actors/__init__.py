"""Scraping resilience actors built on the supervision core.

A job is an actor application: a checkpoint actor (the one writer of outcomes), a
failures actor, a work queue with leases and retries, and a browser subtree whose tab
actors run the user's scraping code. See :mod:`actors.job`.
"""

from .browser import BrowserConfig, BrowserNotFound, find_browser
from .classify import Classification, FailureCategory, FailureClassifier
from .faults import Faults
from .job import Job, JobResult, run_job, run_job_async, validate_job_id
from .records import FailureEvent, FailureRecord, ResultRecord
from .retry import POLICIES, RetryPolicy, policy
from .tab import HTTPStatusError, TabActor

__all__ = [
    "POLICIES",
    "BrowserConfig",
    "BrowserNotFound",
    "Classification",
    "FailureCategory",
    "FailureClassifier",
    "FailureEvent",
    "FailureRecord",
    "Faults",
    "HTTPStatusError",
    "Job",
    "JobResult",
    "ResultRecord",
    "RetryPolicy",
    "TabActor",
    "find_browser",
    "policy",
    "run_job",
    "run_job_async",
    "validate_job_id",
]
