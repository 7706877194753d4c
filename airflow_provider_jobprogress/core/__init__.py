"""The shared core: job vocabulary, policies, errors and the sans-I/O protocol machinery."""

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
