"""Pure tests of the core vocabulary and the three vendor protocols, driven by scripted answers (no I/O)."""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
import re
import tracemalloc
from typing import Any

import pendulum
import pytest

from airflow_provider_jobprogress.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobProgressError,
    OperationNotSupportedError,
    RateLimitedError,
    ResultNotForXComError,
    ResultNotReadyError,
    VendorResponseError,
    VendorUnavailableError,
)
from airflow_provider_jobprogress.core.model import JobProgress, JobState, short
from airflow_provider_jobprogress.core.policies import PollPolicy, RequestRetry, parse_retry_after
from airflow_provider_jobprogress.core.protocol import (
    ConnectionFields,
    GetToken,
    Response,
    ResultPart,
    Sleep,
    Token,
    TransportError,
)
from airflow_provider_jobprogress.vendors import itwin as itwin_module
from airflow_provider_jobprogress.vendors import olconnect as olconnect_module
from airflow_provider_jobprogress.vendors.itwin import ITwinApi
from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi
from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi
from tests.flowdriver import TOKEN, drive

# -- answers -------------------------------------------------------------------------------------


def text(status: int, body: str = "", headers: dict[str, str] | None = None) -> Response:
    return Response.build(status, {"Content-Type": "text/plain", **(headers or {})}, body.encode())


def jresp(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response.build(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode())


def html(status: int) -> Response:
    return Response.build(status, {"Content-Type": "text/html"}, b"<html><body><h1>Bad Gateway</h1></body></html>")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- vendors -------------------------------------------------------------------------------------

OLC = "http://olc:9340"
OLC_PRINT = OLC + "/rest/serverengine/workflow/print"
OLC_PASSWORD = "olc-pa55word"
SX = "https://sx.example"
SX_GUID = "6b3a9e1c-guid"
ITWIN = "https://api.example"
ITWIN_TOKEN_URL = "https://ims.example/connect/token"
ITWIN_SECRET = "itwin-client-s3cret"


def olconnect(**kwargs: Any) -> OLConnectApi:
    return OLConnectApi(OLC, user="admin", password=OLC_PASSWORD, **kwargs)


def scriptx(**kwargs: Any) -> ScriptXApi:
    return ScriptXApi(SX, license_guid=SX_GUID, **kwargs)


def itwin(api: str = "realitydataanalysis", **kwargs: Any) -> ITwinApi:
    return ITwinApi(
        client_id="client-1",
        client_secret=ITWIN_SECRET,
        api=api,
        base_url=ITWIN,
        token_url=ITWIN_TOKEN_URL,
        itwin_id="twin-1",
        **kwargs,
    )


def sx_status(code: Any, message: str = "") -> Response:
    return jresp(200, {"status": code, "message": message, "jobIdentifier": "t1"})


def itwin_progress(state: str, percentage: Any = 50, step: str | None = None) -> Response:
    reading: dict[str, Any] = {"state": state, "percentage": percentage}
    if step is not None:
        reading["step"] = step
    return jresp(200, {"progress": reading})


def itwin_error(status: int, code: str, message: str = "", headers: dict[str, str] | None = None) -> Response:
    return jresp(status, {"error": {"code": code, "message": message}}, headers)


# == core: model ==================================================================================


@pytest.mark.parametrize(
    ("state", "terminal"),
    [
        (JobState.QUEUED, False),
        (JobState.RUNNING, False),
        (JobState.SUCCEEDED, True),
        (JobState.FAILED, True),
        (JobState.CANCELLED, True),
    ],
)
def test_only_succeeded_failed_and_cancelled_are_terminal(state: JobState, terminal: bool) -> None:
    assert state.is_terminal is terminal
    assert JobProgress("v", "j", state).is_terminal is terminal


def test_job_progress_survives_a_json_round_trip() -> None:
    progress = JobProgress(
        "iTwin",
        "j-1",
        JobState.RUNNING,
        42.5,
        step="Segmentation",
        message="half way",
        raw={"progress": {"percentage": 42.5, "steps": ("a", "b")}, 3: None},
    )
    data = json.loads(json.dumps(progress.to_dict()))
    back = JobProgress.from_dict(data)
    assert back == progress
    assert back.state is JobState.RUNNING


def test_job_progress_to_dict_leaves_the_vendor_body_out() -> None:
    # Events and XComs carry the facts; the body (dates, e-mails, whatever the vendor sends) stays in-process.
    data = JobProgress("v", "j", JobState.QUEUED, raw={"when": pendulum.datetime(2024, 1, 2, tz="UTC")}).to_dict()
    assert "raw" not in data
    assert data["state"] == "queued"
    # an event written before the body was left out still resumes the task
    assert JobProgress.from_dict({**data, "raw": {"big": "body"}}).raw is None


# == core: policies ===============================================================================


def test_fixed_poll_policy_always_waits_the_same() -> None:
    policy = PollPolicy.fixed(30)
    assert [policy.delay(k) for k in (0, 1, 10, 1000)] == [30, 30, 30, 30]


def test_exponential_poll_policy_grows_up_to_its_cap() -> None:
    policy = PollPolicy.exponential(5, factor=2, max_interval=60)
    assert [policy.delay(k) for k in range(6)] == [5, 10, 20, 40, 60, 60]
    assert policy.delay(100_000) == 60


def test_sequence_poll_policy_follows_the_vendor_list_then_stays_on_the_last() -> None:
    policy = PollPolicy.sequence([15, 30, 60, 120])
    assert [policy.delay(k) for k in range(7)] == [15, 30, 60, 120, 120, 120, 120]
    assert policy.delay(10_000) == 120
    assert policy.restart_on_change is True


def test_poll_policy_from_a_number_is_fixed() -> None:
    assert PollPolicy.from_value(12, PollPolicy.fixed(30)) == PollPolicy.fixed(12)
    assert PollPolicy.from_value(2.5, PollPolicy.fixed(30)).delay(3) == 2.5


def test_poll_policy_from_none_is_the_default() -> None:
    default = PollPolicy.sequence([15, 30])
    assert PollPolicy.from_value(None, default) is default


def test_poll_policy_from_a_dict() -> None:
    policy = PollPolicy.from_value({"kind": "sequence", "intervals": [15, 30, 60]}, PollPolicy.fixed(30))
    assert policy.kind == "sequence"
    assert policy.intervals == (15.0, 30.0, 60.0)
    assert policy.delay(5) == 60


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        {"kind": "hourly"},
        {"kind": "sequence"},
        {"kind": "sequence", "intervals": []},
        {"kind": "sequence", "intervals": [15, -1]},
        {"kind": "exponential", "interval": 5, "factor": 0.5},
        {"kind": "fixed", "interval": 0},
    ],
)
def test_invalid_poll_policy_raises_value_error(value: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract; messages vary
        PollPolicy.from_value(value, PollPolicy.fixed(30))


def test_poll_policy_with_an_unknown_key_raises_value_error() -> None:
    with pytest.raises(ValueError, match="seconds"):
        PollPolicy.from_value({"kind": "fixed", "seconds": 10}, PollPolicy.fixed(30))


@pytest.mark.parametrize(
    "policy",
    [
        PollPolicy.fixed(7),
        PollPolicy.exponential(5, factor=1.5, max_interval=60),
        PollPolicy.sequence([15, 30, 60, 120]),
        PollPolicy.sequence([1, 2], restart_on_change=False),
    ],
)
def test_poll_policy_round_trips_through_its_json_dict(policy: PollPolicy) -> None:
    data = json.loads(json.dumps(policy.to_dict()))
    assert PollPolicy.from_value(data, PollPolicy.fixed(99)) == policy


def test_request_retry_round_trips_through_its_json_dict() -> None:
    policy = RequestRetry(attempts=3, initial_delay=0.5, max_retry_after=10, rate_limit_waits=2, request_timeout=9)
    assert RequestRetry.from_value(json.loads(json.dumps(policy.to_dict()))) == policy
    assert RequestRetry.from_value(None) == RequestRetry()


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"initial_delay": -1}, {"factor": 0.9}, {"jitter": -0.1}, {"request_timeout": 0}]
)
def test_invalid_request_retry_raises_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        RequestRetry(**kwargs)


@pytest.mark.parametrize(("failures", "base"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (20, 60.0)])
def test_retry_backoff_grows_to_max_delay_with_bounded_jitter(failures: int, base: float) -> None:
    policy = RequestRetry(initial_delay=1, factor=2, max_delay=60, jitter=0.25)
    delays = [policy.backoff(failures) for _ in range(300)]
    assert all(base <= d <= base * 1.25 for d in delays)
    assert max(delays) > base  # the jitter is really there


def test_retry_backoff_without_jitter_is_exact() -> None:
    assert RequestRetry(initial_delay=1, factor=3, jitter=0).backoff(3) == 9.0


def test_retry_backoff_after_very_many_failures_stays_at_max_delay() -> None:
    assert RequestRetry(jitter=0).backoff(5000) == 60.0


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 2 ", 2.0), ("0.5", 0.5), ("-3", 0.0)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_http_date_counts_from_now() -> None:
    now = pendulum.datetime(2015, 10, 21, 7, 27, 30, tz="UTC")
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 99 Foo 2015", "<html>"])
def test_unreadable_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header) is None


def test_retry_after_nan_is_unreadable() -> None:
    assert parse_retry_after("nan") is None


# == core: errors =================================================================================

ERROR_CLASSES = [
    AuthenticationError,
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    OperationNotSupportedError,
    ResultNotForXComError,
    ResultNotReadyError,
    VendorResponseError,
    VendorUnavailableError,
]


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_error_message_starts_with_vendor_and_job(cls: type[JobProgressError]) -> None:
    err = cls("iTwin", "j-1", "read progress: HTTP 404")
    assert str(err).startswith("iTwin job j-1: read progress: HTTP 404")
    assert str(cls("iTwin", None, "log in")).startswith("iTwin: log in")


def test_error_message_ends_with_what_to_do() -> None:
    assert str(AuthenticationError("OL Connect", None, "refused")).endswith(
        "Check the login, password, license or client credentials in the Airflow connection"
    )


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_pickled_error_keeps_type_and_fields(cls: type[JobProgressError]) -> None:
    err = cls("ScriptX.Services", "t1", "boom", hint="do this")
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    assert type(back) is cls
    assert (back.vendor, back.job_id, back.detail, back.hint) == ("ScriptX.Services", "t1", "boom", "do this")
    assert str(back) == str(err)


def test_pickled_rate_limited_error_keeps_retry_after() -> None:
    err = RateLimitedError("iTwin", "j", "slow down", retry_after=42.0)
    back = pickle.loads(pickle.dumps(err))  # noqa: S301
    assert type(back) is RateLimitedError
    assert back.retry_after == 42.0
    assert str(back) == str(err)


# == the shared exchange (through ScriptX, OL Connect and iTwin) =================================


def test_503_then_200_is_retried_after_a_sleep() -> None:
    progress, requests, sleeps = drive(scriptx().progress("t1"), [text(503, "busy"), sx_status(5)])
    assert progress.state is JobState.RUNNING
    assert len(requests) == 2
    assert len(sleeps) == 1
    assert 1.0 <= sleeps[0].seconds <= 1.25


def test_five_503_raise_vendor_unavailable() -> None:
    with pytest.raises(VendorUnavailableError, match="after 5 tries") as info:
        drive(scriptx().progress("t1"), [text(503, "busy")] * 5)
    assert str(info.value).startswith("ScriptX.Services job t1:")


def test_five_503_sleep_four_times_with_growing_backoff() -> None:
    sleeps: list[Sleep] = []
    flow = scriptx(request_retry=RequestRetry(jitter=0)).progress("t1")
    with pytest.raises(VendorUnavailableError):
        drive(flow, [text(503)] * 5, sleep_log=sleeps)
    assert [s.seconds for s in sleeps] == [1.0, 2.0, 4.0, 8.0]


def test_503_on_a_submit_is_not_retried() -> None:
    with pytest.raises(VendorUnavailableError):
        drive(scriptx().submit({"document": "https://x/a.html"}), [text(503, "busy")])


def test_transport_error_after_a_submit_was_sent_is_not_retried() -> None:
    with pytest.raises(VendorUnavailableError, match="ReadTimeout") as info:
        drive(scriptx().submit({"document": "https://x/a.html"}), [TransportError("ReadTimeout", sent=True)])
    assert "1 tries" in str(info.value)


def test_transport_error_before_a_submit_was_sent_is_retried() -> None:
    answer = jresp(200, {"status": 2, "jobIdentifier": "t9", "message": ""})
    token, requests, sleeps = drive(
        scriptx().submit({"document": "https://x/a.html"}), [TransportError("ConnectError", sent=False), answer]
    )
    assert token == "t9"
    assert len(requests) == 2
    assert len(sleeps) == 1


def test_transport_error_on_a_poll_is_retried_even_after_sending() -> None:
    progress, _, sleeps = drive(scriptx().progress("t1"), [TransportError("ReadTimeout", sent=True), sx_status(6)])
    assert progress.state is JobState.SUCCEEDED
    assert len(sleeps) == 1


def test_429_waits_for_retry_after() -> None:
    progress, requests, sleeps = drive(
        scriptx().progress("t1"), [text(429, "slow down", {"Retry-After": "2"}), sx_status(5)]
    )
    assert progress.state is JobState.RUNNING
    assert sleeps == [Sleep(2.0)]
    assert len(requests) == 2


def test_429_is_not_counted_as_a_failure() -> None:
    policy = RequestRetry(attempts=2, jitter=0)
    replies = [text(429, "", {"Retry-After": "3"}), text(503), sx_status(6)]
    progress, _, sleeps = drive(scriptx(request_retry=policy).progress("t1"), replies)
    assert progress.state is JobState.SUCCEEDED
    assert sleeps == [Sleep(3.0), Sleep(1.0)]


def test_429_longer_than_max_retry_after_raises_rate_limited() -> None:
    api = scriptx(request_retry=RequestRetry(max_retry_after=60))
    with pytest.raises(RateLimitedError) as info:
        drive(api.progress("t1"), [text(429, "quota", {"Retry-After": "600"})])
    assert info.value.retry_after == 600.0
    assert str(info.value).startswith("ScriptX.Services job t1:")


def test_429_more_often_than_rate_limit_waits_raises_rate_limited() -> None:
    api = scriptx(request_retry=RequestRetry(rate_limit_waits=2))
    with pytest.raises(RateLimitedError):
        drive(api.progress("t1"), [text(429, "", {"Retry-After": "1"})] * 3)


@pytest.mark.parametrize("header", ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
def test_429_asking_for_no_pause_waits_the_policy_backoff(header: str) -> None:
    """Retry-After 0, negative or past is no reason to ask again at once (ten times per poll, before)."""
    policy = RequestRetry(initial_delay=1, factor=2, jitter=0)
    replies = [text(429, "", {"Retry-After": header})] * 3 + [sx_status(5)]
    _, _, sleeps = drive(scriptx(request_retry=policy).progress("t1"), replies)
    assert sleeps == [Sleep(1.0), Sleep(2.0), Sleep(4.0)]


@pytest.mark.parametrize("header", ["86400", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_429_asking_for_more_than_the_retry_after_limit_pauses_that_long_and_says_what_was_asked(header: str) -> None:
    api = scriptx(request_retry=RequestRetry(retry_after_limit=900))
    with pytest.raises(RateLimitedError) as info:
        drive(api.progress("t1"), [text(429, "quota", {"Retry-After": header})])
    assert info.value.retry_after == 900.0
    asked = parse_retry_after(header)
    said = re.search(r"asked for a pause of (\d+) s", str(info.value))
    assert asked is not None
    assert said is not None
    assert abs(int(said[1]) - asked) < 60, "what the vendor asked for (an HTTP date counts from now)"
    assert "retry_after_limit" in str(info.value)


def test_rate_limited_after_its_waits_pauses_at_least_the_policy_backoff() -> None:
    api = scriptx(request_retry=RequestRetry(rate_limit_waits=2, initial_delay=1, jitter=0))
    with pytest.raises(RateLimitedError) as info:
        drive(api.progress("t1"), [text(429, "", {"Retry-After": "0"})] * 3)
    assert info.value.retry_after == 4.0


def test_401_asks_for_a_fresh_token_once_and_replays() -> None:
    asks: list[GetToken] = []
    progress, requests, _ = drive(
        itwin().progress("j1"), [itwin_error(401, "HeaderNotFound"), itwin_progress("active")], token_asks=asks
    )
    assert progress.state is JobState.RUNNING
    assert [a for a in asks if a.stale is not None] == [GetToken(stale=TOKEN)]
    assert [r.url for r in requests] == [ITWIN + "/realitydataanalysis/jobs/j1/progress"] * 2
    assert all(r.headers["Authorization"] == "Bearer tok" for r in requests)


def test_second_401_raises_authentication_error() -> None:
    asks: list[GetToken] = []
    with pytest.raises(AuthenticationError, match="iTwin job j1"):
        drive(itwin().progress("j1"), [itwin_error(401, "HeaderNotFound")] * 2, token_asks=asks)
    assert len([a for a in asks if a.stale is not None]) == 1


# == OL Connect ===================================================================================


def test_olconnect_login_sends_basic_and_reads_token_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(olconnect_module, "now", lambda: 1000.0)
    token, requests, _ = drive(olconnect().login(), [text(200, "abc123\n", {"Token-Expires-In": "3600"})])
    assert token == Token("abc123", 4600.0)
    (request,) = requests
    assert (request.method, request.url) == ("POST", OLC + "/rest/serverengine/authentication/login")
    assert request.headers["Authorization"] == basic("admin", OLC_PASSWORD)
    assert request.authenticated is False


def test_olconnect_login_without_expiry_gives_a_token_without_expiry() -> None:
    token, _, _ = drive(olconnect().login(), [text(200, "abc123")])
    assert token == Token("abc123", None)


def test_olconnect_login_answered_with_html_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError, match="HTML page"):
        drive(olconnect().login(), [html(200)])


def test_olconnect_401_on_login_is_authentication_error_without_the_password() -> None:
    with pytest.raises(AuthenticationError) as info:
        drive(olconnect().login(), [text(401, "Unauthorized", {"WWW-Authenticate": "BASIC"})])
    message = str(info.value)
    assert message.startswith("OL Connect:")
    assert OLC_PASSWORD not in message
    assert basic("admin", OLC_PASSWORD).split()[1] not in message


def test_olconnect_token_is_sent_as_auth_token_header() -> None:
    asks: list[GetToken] = []
    _, (request,), _ = drive(olconnect().progress("op1"), [text(200, "50")], token_asks=asks)
    assert request.headers == {"auth_token": "tok"}
    assert asks == [GetToken(stale=None)]


def test_olconnect_basic_mode_sends_basic_on_every_call_and_never_logs_in() -> None:
    api = olconnect(auth="basic")
    asks: list[GetToken] = []
    _, progress_requests, _ = drive(api.progress("op1"), [text(200, "50")], token_asks=asks)
    _, cancel_requests, _ = drive(api.cancel("op1"), [text(204)], token_asks=asks)
    for request in progress_requests + cancel_requests:
        assert request.headers == {"Authorization": basic("admin", OLC_PASSWORD)}
    assert asks == []


def test_olconnect_without_user_sends_no_auth_header() -> None:
    asks: list[GetToken] = []
    _, (request,), _ = drive(OLConnectApi(OLC).progress("op1"), [text(200, "5")], token_asks=asks)
    assert request.headers == {}
    assert asks == []


def test_olconnect_403_also_renews_the_token() -> None:
    asks: list[GetToken] = []
    progress, _, _ = drive(olconnect().progress("op1"), [text(403), text(200, "done")], token_asks=asks)
    assert progress.state is JobState.SUCCEEDED
    assert GetToken(stale=TOKEN) in asks


def test_olconnect_submit_returns_the_operation_id_header() -> None:
    config = {"datamining": {"identifier": "in.csv"}}
    operation, (request,), _ = drive(olconnect().submit(config), [text(202, "", {"operationId": "op-7"})])
    assert operation == "op-7"
    assert (request.method, request.url) == ("POST", OLC_PRINT + "/submit")
    assert request.json == config
    assert request.idempotent is False


def test_olconnect_submit_202_without_operation_id_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError, match="operationId"):
        drive(olconnect().submit({}), [text(202, "")])


def test_olconnect_submit_400_is_invalid_request_with_the_vendor_message() -> None:
    error = {"error": {"status": 400, "message": "Input file in.csv not found in File Store", "parameter": "id"}}
    with pytest.raises(InvalidRequestError, match=r"Input file in\.csv not found in File Store"):
        drive(olconnect().submit({}), [jresp(400, error)])


def test_olconnect_submit_500_with_json_error_is_job_failed() -> None:
    error = {"error": {"status": 500, "message": "Template missing"}}
    with pytest.raises(JobFailedError, match="Template missing"):
        drive(olconnect().submit({}), [jresp(500, error)])


@pytest.mark.parametrize(("body", "percent"), [("0", 0.0), ("42.5", 42.5), ("100", 100.0), (" 7\n", 7.0)])
def test_olconnect_progress_number_means_running(body: str, percent: float) -> None:
    progress, (request,), _ = drive(olconnect().progress("op1"), [text(200, body)])
    assert (progress.state, progress.percent) == (JobState.RUNNING, percent)
    assert (request.method, request.url) == ("GET", OLC_PRINT + "/getProgress/op1")


def test_olconnect_progress_done_means_succeeded() -> None:
    progress, _, _ = drive(olconnect().progress("op1"), [text(200, "done")])
    assert (progress.state, progress.percent) == (JobState.SUCCEEDED, 100.0)


@pytest.mark.parametrize(
    "answer",
    [text(200, "abc"), text(200, ""), text(200, "150"), text(200, "-1"), text(200, "nan"), html(200)],
    ids=["abc", "empty", "150", "negative", "nan", "html"],
)
def test_olconnect_progress_nonsense_is_a_vendor_response_error(answer: Response) -> None:
    with pytest.raises(VendorResponseError) as info:
        drive(olconnect().progress("op1"), [answer])
    assert str(info.value).startswith("OL Connect job op1:")


def test_olconnect_progress_500_with_json_error_means_failed() -> None:
    error = {"error": {"status": 500, "message": "Output creation failed"}}
    progress, requests, _ = drive(olconnect().progress("op1"), [jresp(500, error)])
    assert (progress.state, progress.message) == (JobState.FAILED, "Output creation failed")
    assert len(requests) == 1


def test_olconnect_progress_500_saying_cancelled_means_cancelled() -> None:
    error = {"error": {"status": 500, "message": "The operation was Cancelled by the user"}}
    progress, _, _ = drive(olconnect().progress("op1"), [jresp(500, error)])
    assert progress.state is JobState.CANCELLED


def test_olconnect_progress_502_without_json_is_retried() -> None:
    progress, requests, sleeps = drive(olconnect().progress("op1"), [html(502), text(200, "10")])
    assert progress.percent == 10.0
    assert len(requests) == 2
    assert len(sleeps) == 1


def test_olconnect_progress_404_with_a_result_means_succeeded() -> None:
    progress, requests, _ = drive(olconnect().progress("op1"), [text(404), text(200, "/out/a.pdf")])
    assert progress.state is JobState.SUCCEEDED
    assert (requests[1].method, requests[1].url) == ("POST", OLC_PRINT + "/getResultTxt/op1")


def test_olconnect_progress_404_without_a_result_is_job_not_found() -> None:
    with pytest.raises(JobNotFoundError, match="OL Connect job op1"):
        drive(olconnect().progress("op1"), [text(404), text(404)])


def test_olconnect_cancel_posts_cancel() -> None:
    result, (request,), _ = drive(olconnect().cancel("op1"), [text(204)])
    assert result is None
    assert (request.method, request.url) == ("POST", OLC_PRINT + "/cancel/op1")


# == ScriptX ======================================================================================


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (0, JobState.QUEUED),
        (1, JobState.QUEUED),
        (2, JobState.RUNNING),
        (3, JobState.RUNNING),
        (4, JobState.RUNNING),
        (5, JobState.RUNNING),
        (7, JobState.RUNNING),
        (8, JobState.RUNNING),
        (6, JobState.SUCCEEDED),
        (100, JobState.SUCCEEDED),
        (102, JobState.SUCCEEDED),
        (-1, JobState.FAILED),
        (101, JobState.FAILED),
        (-2, JobState.CANCELLED),
    ],
)
def test_scriptx_status_code_maps_to_state(code: int, state: JobState) -> None:
    progress, (request,), _ = drive(scriptx().progress("t1"), [sx_status(code)])
    assert progress.state is state
    assert (request.method, request.url) == ("GET", SX + "/api/v1/printPdf/status/t1")


def test_scriptx_status_100_says_the_output_was_already_collected() -> None:
    progress, _, _ = drive(scriptx().progress("t1"), [sx_status(100)])
    assert "already" in (progress.message or "")


def test_scriptx_unknown_status_code_is_a_vendor_response_error_naming_it() -> None:
    with pytest.raises(VendorResponseError, match="42") as info:
        drive(scriptx().progress("t1"), [sx_status(42)])
    assert str(info.value).startswith("ScriptX.Services job t1:")


@pytest.mark.parametrize("code", ["6", True, False, None, 6.0])
def test_scriptx_status_that_is_not_an_integer_is_a_vendor_response_error(code: Any) -> None:
    with pytest.raises(VendorResponseError):
        drive(scriptx().progress("t1"), [sx_status(code)])


def test_scriptx_sends_the_license_as_basic_user_with_empty_password() -> None:
    _, (request,), _ = drive(scriptx().progress("t1"), [sx_status(5)])
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{SX_GUID}:".encode()).decode()


@pytest.mark.parametrize("status", [1, 2, 4])
def test_scriptx_submit_accepted_returns_the_job_token(status: int) -> None:
    answer = jresp(200, {"status": status, "jobIdentifier": "tok-5", "message": ""})
    token, (request,), _ = drive(scriptx().submit({"document": "https://x/a.html"}), [answer])
    assert token == "tok-5"
    assert (request.method, request.url, request.idempotent) == ("POST", SX + "/api/v1/printPdf/print", False)


@pytest.mark.parametrize("status", [3, 0])
def test_scriptx_submit_refused_is_job_failed_with_the_message(status: int) -> None:
    answer = jresp(200, {"status": status, "jobIdentifier": "", "message": "Printer not found"})
    with pytest.raises(JobFailedError, match="Printer not found"):
        drive(scriptx().submit({}), [answer])


def test_scriptx_submit_without_job_identifier_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError, match="job identifier"):
        drive(scriptx().submit({}), [jresp(200, {"status": 2, "message": ""})])


def test_scriptx_submit_status_true_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError):
        drive(scriptx().submit({}), [jresp(200, {"status": True, "jobIdentifier": "t1"})])


def test_scriptx_malformed_json_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError, match="expected JSON"):
        drive(scriptx().progress("t1"), [text(200, "{status: 6")])
    with pytest.raises(VendorResponseError, match="expected JSON"):
        drive(scriptx().submit({}), [html(200)])


def test_scriptx_unknown_token_is_job_not_found() -> None:
    with pytest.raises(JobNotFoundError, match=r"ScriptX\.Services job t1"):
        drive(scriptx().progress("t1"), [text(404, "Not Found")])


def test_scriptx_cancel_is_not_supported_and_sends_nothing() -> None:
    with pytest.raises(OperationNotSupportedError, match="nothing was sent"):
        drive(scriptx().cancel("t1"), [])


def test_scriptx_results_download_the_pdf() -> None:
    parts, requests, _ = drive(scriptx().results("t1"), [])
    assert requests == []
    (part,) = parts
    assert part.name is None, "the download's Content-Disposition names it (else the job id, .pdf)"
    assert part.content_type == "application/pdf"
    assert part.request is not None
    assert (part.request.method, part.request.url) == ("GET", SX + "/api/v1/printPdf/download/t1")


def test_scriptx_cloud_connection_defaults_to_meadroid_over_https() -> None:
    api = ScriptXApi.from_connection(ConnectionFields("sx", password=SX_GUID))
    assert (api.base_url, api.variant) == ("https://scriptxservices.meadroid.com", "cloud")


def test_scriptx_windows_pc_connection_defaults_to_local_port_41191() -> None:
    api = ScriptXApi.from_connection(ConnectionFields("sx", extra={"variant": "windows_pc"}))
    assert api.base_url == "http://127.0.0.1:41191"


def test_scriptx_unknown_variant_raises_value_error() -> None:
    with pytest.raises(ValueError, match="variant"):
        ScriptXApi.from_connection(ConnectionFields("sx", extra={"variant": "mainframe"}))


# == iTwin ========================================================================================


def test_itwin_login_posts_client_credentials_and_reads_expires_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(itwin_module, "now", lambda: 1000.0)
    answer = jresp(200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600})
    token, (request,), _ = drive(itwin().login(), [answer])
    assert token == Token("at-1", 4600.0)
    assert (request.method, request.url, request.authenticated) == ("POST", ITWIN_TOKEN_URL, False)
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "client-1",
        "client_secret": ITWIN_SECRET,
        "scope": "itwin-platform",
    }


def test_itwin_token_endpoint_refusal_is_authentication_error_without_the_secret() -> None:
    answer = jresp(400, {"error": "invalid_client", "error_description": f"bad secret {ITWIN_SECRET}"})
    with pytest.raises(AuthenticationError, match="invalid_client") as info:
        drive(itwin().login(), [answer])
    assert ITWIN_SECRET not in str(info.value)


def test_itwin_login_request_repr_hides_the_client_secret() -> None:
    request = next(itwin().login())
    assert ITWIN_SECRET not in repr(request)


@pytest.mark.parametrize(
    ("api", "version"), [("realitydataanalysis", 1), ("realityconversion", 1), ("reality-modeling", 2)]
)
def test_itwin_sends_bearer_token_and_accepts_the_api_version(api: str, version: int) -> None:
    _, (request,), _ = drive(itwin(api).progress("j1"), [itwin_progress("Active")])
    assert request.headers == {
        "Authorization": "Bearer tok",
        "Accept": f"application/vnd.bentley.itwin-platform.v{version}+json",
    }
    assert request.url == f"{ITWIN}/{api}/jobs/j1/progress"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("unsubmitted", JobState.QUEUED),
        ("active", JobState.RUNNING),
        ("Active", JobState.RUNNING),
        ("ACTIVE", JobState.RUNNING),
        ("success", JobState.SUCCEEDED),
        ("Success", JobState.SUCCEEDED),
        ("cancelled", JobState.CANCELLED),
    ],
)
def test_itwin_v1_progress_state_maps_case_insensitively(state: str, expected: JobState) -> None:
    progress, _, _ = drive(itwin().progress("j1"), [itwin_progress(state)])
    assert progress.state is expected


def test_itwin_v1_progress_reads_percentage_and_step() -> None:
    progress, _, _ = drive(itwin().progress("j1"), [itwin_progress("active", 40, "Segmentation")])
    assert (progress.percent, progress.step) == (40.0, "Segmentation")


def test_itwin_unsubmitted_job_says_it_was_never_submitted() -> None:
    progress, _, _ = drive(itwin().progress("j1"), [itwin_progress("unsubmitted", 0)])
    assert "never submitted" in (progress.message or "")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Queued", JobState.QUEUED),
        ("Active", JobState.RUNNING),
        ("TerminatingOnCancel", JobState.RUNNING),
        ("TerminatingOnFailure", JobState.RUNNING),
        ("Success", JobState.SUCCEEDED),
        ("Cancelled", JobState.CANCELLED),
    ],
)
def test_itwin_v2_progress_state_maps(state: str, expected: JobState) -> None:
    progress, _, _ = drive(itwin("reality-modeling").progress("j1"), [itwin_progress(state)])
    assert progress.state is expected


def test_itwin_progress_not_found_falls_back_to_job_details() -> None:
    progress, requests, _ = drive(
        itwin().progress("j1"),
        [itwin_error(404, "ProgressNotFound"), jresp(200, {"job": {"id": "j1", "state": "success"}})],
    )
    assert (progress.state, progress.percent) == (JobState.SUCCEEDED, 100.0)
    assert (requests[1].method, requests[1].url) == ("GET", ITWIN + "/realitydataanalysis/jobs/j1")


def test_itwin_failed_progress_reads_the_error_from_job_details() -> None:
    details = {
        "job": {
            "id": "j1",
            "state": "failed",
            "executionInformation": {"errors": [{"code": "E1", "title": "T", "message": "Out of memory"}]},
        }
    }
    progress, requests, _ = drive(itwin().progress("j1"), [itwin_progress("failed", 80), jresp(200, details)])
    assert (progress.state, progress.message) == (JobState.FAILED, "Out of memory")
    assert len(requests) == 2


def test_itwin_v2_failed_job_reads_its_messages() -> None:
    details = {"job": {"id": "j1", "state": "Failed", "executionInfo": {}}}
    messages = {"messages": {"errors": [{"code": "X", "title": "Bad", "message": "Input has no images"}]}}
    progress, requests, _ = drive(
        itwin("reality-modeling").progress("j1"),
        [itwin_progress("Failed", 30), jresp(200, details), jresp(200, messages)],
    )
    assert (progress.state, progress.message) == (JobState.FAILED, "Input has no images")
    assert requests[2].url == ITWIN + "/reality-modeling/jobs/j1/messages"


def test_itwin_job_not_found_raises() -> None:
    with pytest.raises(JobNotFoundError, match="iTwin job j1"):
        drive(itwin().progress("j1"), [itwin_error(404, "JobNotFound", "no such job")])


def test_itwin_unknown_state_is_a_vendor_response_error() -> None:
    with pytest.raises(VendorResponseError, match="weird") as info:
        drive(itwin().progress("j1"), [itwin_progress("weird")])
    assert str(info.value).startswith("iTwin job j1:")


@pytest.mark.parametrize("percentage", ["abc", "50", True, [50]])
def test_itwin_percentage_that_is_not_a_number_is_a_vendor_response_error(percentage: Any) -> None:
    with pytest.raises(VendorResponseError, match="percentage"):
        drive(itwin().progress("j1"), [itwin_progress("active", percentage)])


def test_itwin_rate_limit_waits_for_retry_after() -> None:
    limited = itwin_error(429, "RateLimitExceeded", "Too many", {"Retry-After": "5"})
    progress, _, sleeps = drive(itwin().progress("j1"), [limited, itwin_progress("active")])
    assert progress.state is JobState.RUNNING
    assert sleeps == [Sleep(5.0)]


def test_itwin_create_returns_the_id_and_adds_the_itwin_id() -> None:
    spec = {"type": "objects2D", "name": "n"}
    job_id, (request,), _ = drive(itwin().create(spec), [jresp(201, {"job": {"id": "j-42", "state": "unsubmitted"}})])
    assert job_id == "j-42"
    assert (request.method, request.url, request.idempotent) == ("POST", ITWIN + "/realitydataanalysis/jobs", False)
    assert request.json == {"type": "objects2D", "name": "n", "iTwinId": "twin-1"}


def test_itwin_create_keeps_an_explicit_itwin_id() -> None:
    _, (request,), _ = drive(itwin().create({"iTwinId": "mine"}), [jresp(201, {"job": {"id": "j"}})])
    assert request.json == {"iTwinId": "mine"}


def test_itwin_v1_cancel_patches_state_cancelled() -> None:
    _, (request,), _ = drive(itwin().cancel("j1"), [jresp(200, {"job": {"id": "j1"}})])
    assert (request.method, request.url, request.json) == (
        "PATCH",
        ITWIN + "/realitydataanalysis/jobs/j1",
        {"state": "cancelled"},
    )


def test_itwin_v2_cancel_deletes_the_job() -> None:
    _, (request,), _ = drive(itwin("reality-modeling").cancel("j1"), [jresp(200, {"job": {"id": "j1"}})])
    assert (request.method, request.url) == ("DELETE", ITWIN + "/reality-modeling/jobs/j1")


CONTAINER = "https://acct.blob.core.windows.net/cont-1?sv=2021-08-06&sr=c&sp=rl&sig=SIGNATURE"


def blob_list(names: list[str], next_marker: str = "") -> Response:
    blobs = "".join(
        f"<Blob><Name>{n}</Name><Properties><Content-Length>3</Content-Length></Properties></Blob>" for n in names
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ContainerName="cont-1"><Blobs>{blobs}</Blobs><NextMarker>{next_marker}</NextMarker>'
        "</EnumerationResults>"
    )
    return Response.build(200, {"Content-Type": "application/xml"}, body.encode())


def test_itwin_results_list_the_output_container_and_keep_the_sas_query() -> None:
    details = {"job": {"id": "j1", "state": "success", "outputs": [{"type": "objects2D", "id": "rd-1"}]}}
    read_access = {"type": "AzureBlobSasUrl", "_links": {"containerUrl": {"href": CONTAINER}}}
    asks: list[GetToken] = []
    parts, requests, _ = drive(
        itwin().results("j1"),
        [jresp(200, details), jresp(200, read_access), blob_list(["a/1.json"], "m2"), blob_list(["b.txt"])],
        token_asks=asks,
    )
    details_req, access_req, page1, page2 = requests
    assert details_req.url == ITWIN + "/realitydataanalysis/jobs/j1"
    assert access_req.url == ITWIN + "/reality-management/reality-data/rd-1/readaccess"
    assert access_req.params == {"iTwinId": "twin-1"}
    assert access_req.headers["Accept"] == "application/vnd.bentley.itwin-platform.v1+json"
    assert page1.url == CONTAINER + "&restype=container&comp=list"
    assert page2.url == CONTAINER + "&restype=container&comp=list&marker=m2"
    for listing in (page1, page2):
        assert listing.authenticated is False
        assert "Authorization" not in listing.headers
    assert len(asks) == 2  # details and read access only: the SAS URL carries its own credentials
    assert [p.name for p in parts] == ["objects2D/a/1.json", "objects2D/b.txt"]
    assert all(isinstance(p, ResultPart) and p.request is not None for p in parts)
    assert [p.request.url for p in parts if p.request] == [
        "https://acct.blob.core.windows.net/cont-1/a/1.json?sv=2021-08-06&sr=c&sp=rl&sig=SIGNATURE",
        "https://acct.blob.core.windows.net/cont-1/b.txt?sv=2021-08-06&sr=c&sp=rl&sig=SIGNATURE",
    ]
    assert all(p.request.authenticated is False for p in parts if p.request)


@pytest.mark.parametrize("state", ["active", "failed", "unsubmitted"])
def test_itwin_results_of_an_unfinished_job_are_not_ready(state: str) -> None:
    with pytest.raises(ResultNotReadyError, match="iTwin job j1"):
        drive(itwin().results("j1"), [jresp(200, {"job": {"id": "j1", "state": state}})])


# == the driver itself: a scripted test must fail when the flow and the script disagree ===========


def test_driver_fails_when_the_flow_sends_an_unscripted_request() -> None:
    with pytest.raises(pytest.fail.Exception, match="unscripted request"):
        drive(scriptx().progress("t1"), [])


def test_driver_fails_when_scripted_replies_are_left_unused() -> None:
    with pytest.raises(pytest.fail.Exception, match="1 scripted replies unused"):
        drive(scriptx().progress("t1"), [sx_status(6), sx_status(6)])
    with pytest.raises(pytest.fail.Exception, match="1 scripted replies unused"):
        drive(scriptx().progress("t1"), [text(404), sx_status(6)])


# -- OL Connect results: one output, several spool files ------------------------------------------


def test_olconnect_single_output_result_is_get_result() -> None:
    parts, requests, _ = drive(olconnect().results("op1"), [text(200, "/out/op1/letter.pdf")])
    assert [r.path for r in requests] == ["/rest/serverengine/workflow/print/getResultTxt/op1"]
    assert len(parts) == 1
    assert parts[0].request is not None
    assert parts[0].request.url == f"{OLC_PRINT}/getResult/op1"


def test_olconnect_several_spool_files_come_from_the_file_store() -> None:
    answers = [text(200, "/out/op1/a.pdf\n/out/op1/b.pdf\n"), text(200, "1001\n1002\n")]
    parts, requests, _ = drive(olconnect().results("op1"), answers)
    assert [r.path.rsplit("/", 1)[0] for r in requests] == [
        "/rest/serverengine/workflow/print/getResultTxt",
        "/rest/serverengine/workflow/print/getManagedResult",
    ]
    assert [p.name for p in parts] == ["a.pdf", "b.pdf"]
    assert [p.request.url for p in parts if p.request] == [
        f"{OLC}/rest/serverengine/filestore/file/1001",
        f"{OLC}/rest/serverengine/filestore/file/1002",
    ]


def test_olconnect_spool_paths_are_the_result_where_no_file_store_result_exists() -> None:
    answers = [text(200, "/out/op1/a.pdf\n/out/op1/b.pdf"), text(404, "not found")]
    parts, _, _ = drive(olconnect().results("op1"), answers)
    assert len(parts) == 1
    assert parts[0].value == "/out/op1/a.pdf\n/out/op1/b.pdf"


def test_olconnect_xcom_result_of_several_spool_files_is_their_paths() -> None:
    parts, requests, _ = drive(olconnect().xcom_results("op1"), [text(200, "/out/a.pdf\n/out/b.pdf")])
    assert len(requests) == 1
    assert olconnect().result_value(parts[0].value or "") == ["/out/a.pdf", "/out/b.pdf"]


def test_itwin_a_blob_listing_that_repeats_its_marker_is_refused() -> None:
    """An output container whose listing hands out the same marker again would be listed for ever."""
    details = {"job": {"id": "j1", "state": "success", "outputs": [{"type": "objects2D", "id": "rd-1"}]}}
    read_access = {"type": "AzureBlobSasUrl", "_links": {"containerUrl": {"href": CONTAINER}}}
    with pytest.raises(VendorResponseError, match=r"j1.*same continuation token"):
        drive(
            itwin().results("j1"),
            [jresp(200, details), jresp(200, read_access), blob_list(["a"], "m2"), blob_list(["b"], "m2")],
        )


# -- the work an answer costs on the triggerer's loop ----------------------------------------------------


def loads_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count json.loads calls (each one a parse of a whole body)."""
    calls: list[int] = []
    real = json.loads

    def counted(data: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counted)
    return calls


@pytest.mark.parametrize(
    ("name", "flow", "answers"),
    [
        ("itwin progress", lambda: itwin().progress("j1"), [itwin_progress("Active", 40)]),
        ("itwin error", lambda: itwin().progress("j1"), [itwin_error(409, "Conflict", "busy")]),
        ("olconnect verdict", lambda: olconnect().progress("op1"), [jresp(500, {"error": {"message": "no printer"}})]),
        ("scriptx status", lambda: scriptx().progress("t1"), [sx_status(5)]),
    ],
)
def test_each_answer_is_parsed_once_however_many_readers_ask(
    monkeypatch: pytest.MonkeyPatch, name: str, flow: Any, answers: list[Response]
) -> None:
    calls = loads_counted(monkeypatch)
    with contextlib.suppress(JobProgressError):
        drive(flow(), answers, token_asks=[])
    assert len(calls) == len(answers), f"{name}: {len(calls)} parses of {len(answers)} answers"


def test_a_message_is_made_from_the_start_of_a_long_text_only() -> None:
    """``short`` runs on the loop for any answer it describes: it reads what it shows, not the whole body."""
    body = "50 " * 2_000_000
    tracemalloc.start()
    try:
        described = short(body, 80)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert described == ("50 " * 27)[:79] + "…"
    assert peak < 64 * 1024, f"{peak >> 10} KiB to shorten a 6 MB text"


# -- small flaws in an answer that says clearly how the job stands ----------------------------------------


@pytest.mark.parametrize(
    ("body", "state", "percent"), [("\ufeffdone", JobState.SUCCEEDED, 100.0), ("\ufeff40", JobState.RUNNING, 40.0)]
)
def test_olconnect_progress_after_a_byte_order_mark_is_read(body: str, state: JobState, percent: float) -> None:
    progress, _, _ = drive(olconnect().progress("op1"), [text(200, body)], token_asks=[])
    assert (progress.state, progress.percent) == (state, percent)


def test_scriptx_finished_job_whose_message_is_not_utf8_is_finished() -> None:
    body = b'{"status": 6, "message": "printed on Dru\xffcker 3", "jobIdentifier": "t1"}'
    answer = Response.build(200, {"Content-Type": "application/json"}, body)
    progress, _, _ = drive(scriptx().progress("t1"), [answer])
    assert progress.state is JobState.SUCCEEDED
    assert progress.message == "printed on Dru\ufffdcker 3"


def test_scriptx_status_code_is_not_read_leniently() -> None:
    """Only messages are decoded leniently: a bad byte where the answer's facts are is still an error."""
    answer = Response.build(200, {"Content-Type": "application/json"}, b'{"st\xffatus": 6, "message": "done"}')
    with pytest.raises(VendorResponseError, match="status"):
        drive(scriptx().progress("t1"), [answer])


@pytest.mark.parametrize("percentage", ["n/a", float("nan"), 250, -1, True])
def test_itwin_success_with_an_unreadable_percentage_is_a_success(percentage: Any) -> None:
    progress, _, _ = drive(itwin("reality-modeling").progress("j1"), [itwin_progress("Success", percentage)])
    assert (progress.state, progress.percent) == (JobState.SUCCEEDED, None)


def test_itwin_running_job_with_an_unreadable_percentage_is_still_an_error() -> None:
    with pytest.raises(VendorResponseError, match="percentage"):
        drive(itwin("reality-modeling").progress("j1"), [itwin_progress("Active", "n/a")])


# -- credentials a vendor echoes back ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flow", "secret"),
    [
        ("olconnect token", lambda: olconnect().progress("op1"), TOKEN.value),
        ("olconnect basic", lambda: olconnect(auth="basic").progress("op1"), basic("admin", OLC_PASSWORD)[6:]),
        ("scriptx license", lambda: scriptx().progress("t1"), basic(SX_GUID, "")[6:]),
        ("itwin token", lambda: itwin().progress("j1"), TOKEN.value),
        ("itwin client secret", lambda: itwin().login(), ITWIN_SECRET),
    ],
)
def test_credentials_a_vendor_echoes_are_replaced_before_anything_reads_the_answer(
    name: str, flow: Any, secret: str
) -> None:
    echo = text(409, f"Conflict. You sent: Authorization: Basic {secret}; auth_token: {secret}")
    with pytest.raises(JobProgressError) as raised:
        drive(flow(), [echo], token_asks=[])
    assert secret not in str(raised.value), name
    assert "***" in str(raised.value)
