"""The shared core, one job per module:

- ``model``: the job vocabulary (``JobState``, ``JobProgress``, ``Listing``); ``errors``: the typed errors;
  ``policies``: how often to poll and how to retry a request;
- ``wire``: what a flow yields and receives (``Request``, ``Response``, ``Token``...) and the bounds on an answer;
  ``values``: reading one vendor value (a percentage, a job id); ``settings``: a connection's settings;
- ``protocol``: ``VendorApi``, the discipline every vendor adapter shares (auth, retries, error mapping), as
  sans-I/O flows; ``session``: runs a flow with requests (workers) or aiohttp (the triggerer);
- ``budget``: a connection's request budget in a process; ``poller``: the one poller per connection and event
  loop that reads every wait's job (listing where the vendor can), and ``outlast_cancels``, how a stopping wait
  finishes what it must (a kill's cancel, a session given back) while Airflow re-sends its cancel.
"""

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobProgressError,
    OperationNotSupportedError,
    RateLimitedError,
    ResponseTooLargeError,
    ResultDestinationError,
    ResultNotForXComError,
    ResultNotReadyError,
    UnsafeResultNameError,
    VendorResponseError,
    VendorUnavailableError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, RetryPolicy, parse_retry_after

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "JobProgress",
    "JobProgressError",
    "JobState",
    "OperationNotSupportedError",
    "PollPolicy",
    "RateLimitedError",
    "RequestRetry",
    "ResponseTooLargeError",
    "ResultDestinationError",
    "ResultNotForXComError",
    "ResultNotReadyError",
    "RetryPolicy",
    "UnsafeResultNameError",
    "VendorResponseError",
    "VendorUnavailableError",
    "parse_retry_after",
]
