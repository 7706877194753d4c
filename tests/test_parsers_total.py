"""Any answer gives a typed value or a typed error: every vendor parser and flow, over arbitrary answers.

A trigger that meets an exception nobody planned for (RecursionError on deeply nested JSON, TypeError on a
field of the wrong type) can only say "something went wrong"; a typed error says which vendor, which job and
what came. These properties drive every vendor flow and parser with arbitrary bodies, statuses and JSON
shapes (hypothesis), plus the cases an outside fault probe found.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_provider_jobprogress.core.errors import JobProgressError, VendorResponseError
from airflow_provider_jobprogress.core.model import JobProgress, JobState
from airflow_provider_jobprogress.core.policies import RequestRetry
from airflow_provider_jobprogress.core.protocol import Flow, GetToken, Request, Response, Sleep, Token, VendorApi
from airflow_provider_jobprogress.vendors import itwin as itwin_module
from airflow_provider_jobprogress.vendors import olconnect as olconnect_module
from airflow_provider_jobprogress.vendors import scriptx as scriptx_module
from airflow_provider_jobprogress.vendors.itwin import ITwinApi
from airflow_provider_jobprogress.vendors.olconnect import OLConnectApi
from airflow_provider_jobprogress.vendors.scriptx import ScriptXApi
from tests.flowdriver import drive

#: few tries and no real sleeps: a property run is about what comes back, not about waiting
FAST = RequestRetry(attempts=2, rate_limit_waits=1, initial_delay=0, jitter=0)
MAX_STEPS = 500
JOB = "job-1"
#: "50" in non-ASCII digits, which Python's float() reads and no vendor sends
FULLWIDTH_50 = "\uff15\uff10"
ARABIC_INDIC_50 = "\u0665\u0660"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def olconnect() -> OLConnectApi:
    return OLConnectApi("http://olc:9340", user="admin", password="pw", request_retry=FAST)


def scriptx(license_guid: str | None = "guid") -> ScriptXApi:
    return ScriptXApi("https://sx.example", license_guid=license_guid, request_retry=FAST)


def itwin(api: str) -> ITwinApi:
    return ITwinApi(
        client_id="c",
        client_secret="s",
        api=api,
        base_url="https://api.example",
        token_url="https://ims.example/token",
        itwin_id="twin-1",
        request_retry=FAST,
    )


def _itwin_flows(api: str) -> dict[str, Callable[[], Flow[Any]]]:
    return {
        f"itwin {api} progress": lambda: itwin(api).progress(JOB),
        f"itwin {api} details": lambda: itwin(api).details(JOB),
        f"itwin {api} progress from details": lambda: itwin(api).progress_from_details(JOB),
        f"itwin {api} results": lambda: itwin(api).results(JOB),
        f"itwin {api} output ids": lambda: itwin(api).output_ids(JOB),
        f"itwin {api} create": lambda: itwin(api).create({"type": "x"}),
        f"itwin {api} start": lambda: itwin(api).start(JOB),
        f"itwin {api} cancel": lambda: itwin(api).cancel(JOB),
        f"itwin {api} list jobs": lambda: itwin(api).list_jobs(),
        f"itwin {api} list running": lambda: itwin(api).list_running(),
        f"itwin {api} read ended": lambda: itwin(api).read_ended(
            {JOB: JobProgress("iTwin", JOB, JobState.RUNNING), "job-2": JobProgress("iTwin", "job-2", JobState.QUEUED)}
        ),
        f"itwin {api} check": lambda: itwin(api).check(),
    }


#: every flow a vendor adapter offers, built fresh for each run
FLOWS: dict[str, Callable[[], Flow[Any]]] = {
    "olconnect progress": lambda: olconnect().progress(JOB),
    "olconnect results": lambda: olconnect().results(JOB),
    "olconnect xcom results": lambda: olconnect().xcom_results(JOB),
    "olconnect result text": lambda: olconnect().result_text(JOB),
    "olconnect submit": lambda: olconnect().submit({"template": "t"}),
    "olconnect cancel": lambda: olconnect().cancel(JOB),
    "olconnect check": lambda: olconnect().check(),
    "olconnect login": lambda: olconnect().login(),
    "olconnect list running": lambda: olconnect().list_running(),
    "olconnect read ended": lambda: olconnect().read_ended({JOB: JobProgress("OL Connect", JOB, JobState.RUNNING)}),
    "scriptx progress": lambda: scriptx().progress(JOB),
    "scriptx submit": lambda: scriptx().submit({"document": "d"}),
    "scriptx check (license)": lambda: scriptx().check(),
    "scriptx check (no license)": lambda: scriptx(None).check(),
    "scriptx results": lambda: scriptx().results(JOB),
    "scriptx cancel": lambda: scriptx().cancel(JOB),
    **_itwin_flows("realitydataanalysis"),
    **_itwin_flows("reality-modeling"),
}

#: every API's reading of an error answer, used in every error it raises
ERROR_READERS: dict[str, Callable[[], VendorApi]] = {
    "olconnect": olconnect,
    "scriptx": scriptx,
    "itwin v1": lambda: itwin("realitydataanalysis"),
    "itwin v2": lambda: itwin("reality-modeling"),
}


def run_flow(flow: Flow[Any], answers: Iterator[Response]) -> Any:
    """Drive ``flow`` answering each request with the next answer; tokens granted, sleeps skipped."""
    reply: Any = None
    for _ in range(MAX_STEPS):
        try:
            instruction = flow.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = None
        if isinstance(instruction, Request):
            reply = next(answers)
        elif isinstance(instruction, GetToken):
            reply = Token("tok", None)
        else:
            assert isinstance(instruction, Sleep)
    pytest.fail(f"flow did not finish within {MAX_STEPS} instructions")


# -- strategies --------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    """JSON nested far deeper than Python's recursion limit: a 2 KB body can be 1,000 levels."""
    depth = draw(st.integers(min_value=200, max_value=5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"progress":', "}"), ('{"job":', "}")]))
    inner = draw(st.sampled_from(["1", "null", '"x"', "[]"]))
    return (opener * depth + inner + closer * depth).encode()


#: keys the vendors' answers are read by, each holding a value of any type (``details: 5``, ``outputs: [1]``...)
VENDOR_KEYS = [
    "progress", "job", "jobs", "state", "percentage", "step", "status", "message", "jobIdentifier", "error",
    "details", "code", "errors", "executionInformation", "messages", "outputs", "specifications", "iTwinId",
    "_links", "access_token", "expires_in", "serviceVersion", "company", "identifier", "files", "id",
]  # fmt: skip


@st.composite
def vendor_shaped(draw: st.DrawFn) -> Any:
    """An object with the vendors' own keys, nested the way their answers are, values of arbitrary types."""
    shape = st.deferred(
        lambda: st.dictionaries(st.sampled_from(VENDOR_KEYS), json_values | shape | st.lists(shape, max_size=3))
    )
    return draw(shape)


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(_dump),
    vendor_shaped().map(_dump),
    deep_json(),
    st.sampled_from([b"done", b"50", b"NaN", b"inf", b"-5", b"101", b"1_0", b""]),
    st.sampled_from([FULLWIDTH_50, ARABIC_INDIC_50]).map(str.encode),
    st.text(max_size=50).map(str.encode),
)
statuses = st.sampled_from([200, 200, 200, 201, 202, 204, 302, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503])
content_types = st.sampled_from(["application/json", "text/plain", "text/html", "application/xml", ""])
header_values = st.text(max_size=20).filter(lambda v: "\n" not in v and "\r" not in v)


@st.composite
def answers(draw: st.DrawFn) -> Response:
    headers = {"content-type": draw(content_types)}
    for name in ("operationid", "retry-after", "token-expires-in", "x-data-set-id", "www-authenticate"):
        if draw(st.booleans()):
            headers[name] = draw(header_values)
    return Response.build(draw(statuses), headers, draw(bodies))


def _typed_or_value(call: Callable[[], Any]) -> Any:
    """The value, or None after a typed error; anything else fails the test (it escapes as itself)."""
    try:
        return call()
    except JobProgressError:
        return None


# -- properties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLOWS))
@PROPERTY
@given(replies=st.lists(answers(), min_size=1, max_size=6))
def test_every_flow_answers_anything_with_a_value_or_a_typed_error(name: str, replies: list[Response]) -> None:
    value = _typed_or_value(lambda: run_flow(FLOWS[name](), cycle(replies)))
    if isinstance(value, JobProgress):
        _check_progress(value)


@pytest.mark.parametrize("name", sorted(ERROR_READERS))
@PROPERTY
@given(answer=answers())
def test_every_error_reading_gives_text_or_a_typed_error(name: str, answer: Response) -> None:
    api = ERROR_READERS[name]()
    assert isinstance(api.error_message(answer), str)
    assert isinstance(api.status_error(answer, JOB, what="read"), JobProgressError)
    _typed_or_value(lambda: api.parse_json(answer, JOB, what="read"))


@PROPERTY
@given(answer=answers())
def test_olconnect_answer_parsers_are_total(answer: Response) -> None:
    progress = _typed_or_value(lambda: olconnect_module.parse_progress(answer, JOB))
    if progress is not None:
        _check_progress(progress)
    _typed_or_value(lambda: olconnect_module.managed_files(answer, ["/a", "/b"]))
    _typed_or_value(lambda: olconnect_module.set_ids(answer))


@PROPERTY
@given(data=json_values | vendor_shaped())
def test_json_parsers_are_total_over_any_json_value(data: Any) -> None:
    for parse in (
        lambda: scriptx_module.parse_status(data, JOB),
        lambda: itwin_module.parse_progress(data, JOB),
        lambda: itwin_module.parse_progress({"state": "active", "percentage": data}, JOB),
    ):
        progress = _typed_or_value(parse)
        if progress is not None:
            _check_progress(progress)
    _typed_or_value(lambda: itwin_module.v1_outputs(data if isinstance(data, dict) else {"outputs": data}, JOB))
    _typed_or_value(lambda: itwin_module.v2_outputs(data, JOB))
    _typed_or_value(lambda: scriptx_module._version(data))


connection_texts = (
    st.none() | st.text(max_size=30) | st.sampled_from(["h", "h:1", "http://h", "ftp://h", "h/x", "[::1]"])
)
extras = st.dictionaries(
    st.sampled_from(["auth", "variant", "api", "base_url", "auth_url", "token_url", "scope", "itwin_id", "verify"]),
    json_values,
)


@pytest.mark.parametrize("api_class", [OLConnectApi, ScriptXApi, ITwinApi], ids=lambda c: c.vendor)
@PROPERTY
@given(
    host=connection_texts,
    schema=connection_texts,
    port=st.none() | st.integers(min_value=-5, max_value=70000),
    extra=extras,
    password=st.none() | st.text(max_size=5),
)
def test_connection_settings_give_an_api_or_a_configuration_error(
    api_class: Any, host: str | None, schema: str | None, port: int | None, extra: dict[str, Any], password: str | None
) -> None:
    from airflow_provider_jobprogress.core.errors import ConfigurationError
    from airflow_provider_jobprogress.core.protocol import ConnectionFields

    fields = ConnectionFields("c", host=host, schema=schema, port=port, login="u", password=password, extra=extra)
    refused: ConfigurationError | None = None
    try:
        api = api_class.from_connection(fields)
    except ConfigurationError as exc:
        refused = exc
    except JobProgressError:
        return  # iTwin without client credentials: an AuthenticationError, typed
    if refused is not None:
        assert (refused.conn_id, bool(refused.field)) == ("c", True)
        return
    assert api.base_url.startswith(("http://", "https://")), api.base_url


@PROPERTY
@given(answer=answers())
def test_azure_blob_listing_parser_is_total(answer: Response) -> None:
    _typed_or_value(lambda: itwin_module.parse_blob_list(answer, JOB))


def _check_progress(progress: JobProgress) -> None:
    """A progress a trigger can put in an event: a finite percentage in 0..100, JSON-able."""
    assert isinstance(progress.state, JobState)
    if progress.percent is not None:
        assert math.isfinite(progress.percent), progress.percent
        assert 0 <= progress.percent <= 100, progress.percent
    json.dumps(progress.to_dict(), allow_nan=False)  # no NaN and no depth an event cannot carry


# -- the cases the fault probe found -----------------------------------------------------------------


def jresp(status: int, data: Any) -> Response:
    return Response.build(status, {"Content-Type": "application/json"}, json.dumps(data).encode())


def nested(depth: int = 1000) -> Response:
    """A 2 KB JSON body nested 1,000 deep."""
    return Response.build(200, {"Content-Type": "application/json"}, b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_json_nested_a_thousand_deep_is_a_typed_error_in_every_flow(name: str) -> None:
    _typed_or_value(lambda: run_flow(FLOWS[name](), cycle([nested()])))


@pytest.mark.parametrize("api", ["realitydataanalysis", "reality-modeling"])
@pytest.mark.parametrize(
    "answers_",
    [
        # an error answer whose details are a number
        [jresp(404, {"error": {"code": "JobNotFound", "message": "m", "details": 5}})],
        [jresp(400, {"error": {"code": "Bad", "details": [1, "x", None]}})],
        # failed progress, then details whose errors are a number, then messages as a list
        [
            jresp(200, {"progress": {"state": "failed", "percentage": 10}}),
            jresp(200, {"job": {"state": "failed", "executionInformation": {"errors": 5}}}),
            jresp(200, {"messages": ["boom"]}),
        ],
        [
            jresp(200, {"progress": {"state": "failed", "percentage": 10}}),
            jresp(200, {"job": {"state": "failed", "executionInformation": 5}}),
            jresp(200, {"messages": {"errors": 5}}),
        ],
        [
            jresp(200, {"progress": {"state": "failed", "percentage": 10}}),
            jresp(200, {"job": {"state": "failed"}}),
            jresp(200, [1, 2]),
        ],
    ],
)
def test_itwin_progress_with_fields_of_the_wrong_type_is_typed(api: str, answers_: list[Response]) -> None:
    value = _typed_or_value(lambda: run_flow(itwin(api).progress(JOB), iter(answers_ + answers_[-1:] * 10)))
    if value is not None:
        _check_progress(value)


@pytest.mark.parametrize(
    ("api", "job"),
    [
        # v1 jobs list their outputs in "outputs", v2 jobs in "specifications.outputs"
        ("realitydataanalysis", {"state": "success", "outputs": [1]}),
        ("realitydataanalysis", {"state": "success", "outputs": 5}),
        ("realitydataanalysis", {"state": "success", "outputs": {"a": "b"}}),
        ("reality-modeling", {"state": "success", "specifications": [1]}),
        ("reality-modeling", {"state": "success", "specifications": 5}),
        ("reality-modeling", {"state": "success", "specifications": {"outputs": [1]}}),
        ("reality-modeling", {"state": "success", "specifications": {"outputs": {"a": [1]}}}),
    ],
)
def test_itwin_results_with_outputs_of_the_wrong_type_are_a_vendor_response_error(
    api: str, job: dict[str, Any]
) -> None:
    with pytest.raises(VendorResponseError):
        run_flow(itwin(api).results(JOB), iter([jresp(200, {"job": job})]))


@pytest.mark.parametrize(
    "reading",
    [
        {"state": "active", "percentage": float("nan")},
        {"state": "active", "percentage": float("inf")},
        {"state": "active", "percentage": -1},
        {"state": "active", "percentage": 100.5},
        {"state": "active", "percentage": 10**400},
    ],
)
def test_itwin_percentage_that_is_not_0_to_100_is_refused(reading: dict[str, Any]) -> None:
    with pytest.raises(VendorResponseError, match="percentage"):
        itwin_module.parse_progress(reading, JOB)


@pytest.mark.parametrize("body", ["NaN", "inf", "-inf", "-5", "100.5", FULLWIDTH_50, ARABIC_INDIC_50, "1_0", " 5 0"])
def test_olconnect_progress_that_is_not_an_ascii_0_to_100_is_refused(body: str) -> None:
    answer = Response.build(200, {"Content-Type": "text/plain"}, body.encode())
    with pytest.raises(VendorResponseError, match="0-100"):
        olconnect_module.parse_progress(answer, JOB)


@pytest.mark.parametrize("header", ["token-expires-in", "x-data-set-id"])
def test_olconnect_numeric_headers_in_non_ascii_digits_are_not_numbers(header: str) -> None:
    answer = Response.build(200, {header: "\u00b2"}, b"token-value")
    olconnect_module.set_ids(answer)
    run_flow(olconnect().login(), iter([answer]))


def test_a_progress_with_deeply_nested_raw_data_still_fits_an_event() -> None:
    raw: Any = 1
    for _ in range(5000):
        raw = [raw]
    progress = JobProgress("v", JOB, JobState.RUNNING, 5.0, raw={"x": raw})
    json.dumps(progress.to_dict())


# -- a garbled answer in a long wait -------------------------------------------------------------------


def garbled() -> Response:
    return Response.build(200, {"Content-Type": "text/html"}, b"<html><body>proxy error</body></html>")


def test_poll_reads_progress_again_after_one_unreadable_answer() -> None:
    api = OLConnectApi("http://olc:9340", request_retry=RequestRetry(initial_delay=3, jitter=0))
    progress, requests, sleeps = drive(api.poll(JOB), [garbled(), Response.build(200, {}, b"50")])
    assert (progress.state, progress.percent) == (JobState.RUNNING, 50.0)
    assert len(requests) == 2
    assert sleeps == [Sleep(3.0)]


def test_poll_gives_up_on_an_answer_that_stays_unreadable_after_the_policy_attempts() -> None:
    api = OLConnectApi("http://olc:9340", request_retry=RequestRetry(attempts=3, initial_delay=0, jitter=0))
    with pytest.raises(VendorResponseError, match="expected 0-100"):
        drive(api.poll(JOB), [garbled()] * 3)


# -- the running listing's page: two fields of each job decoded, read as the whole page's JSON would be ---------

job_states = st.sampled_from(["active", "Active", "queued", "Queued", "unsubmitted", "success", "Failed", "x", ""])
listed_jobs = st.one_of(
    st.fixed_dictionaries(
        {"id": st.text(max_size=6) | json_values, "state": job_states | json_values},
        optional={"name": json_values, "executionInformation": json_values, "specifications": json_values},
    ),
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=6)}),
    st.fixed_dictionaries({"state": job_states}),
    json_values,
)
next_links: st.SearchStrategy[Any] = st.sampled_from(
    [
        {"next": {"href": "https://api.example/jobs?continuationToken=abc&$top=2"}},
        {"next": {"href": "https://api.example/jobs?$top=2"}},
        {"next": {"href": "https://x]jobs?continuationToken=abc"}},
        {"next": None},
        {"self": {"href": "x"}},
        [],
        None,
    ]
) | st.builds(lambda href: {"next": {"href": href}}, st.text(max_size=30))
listing_pages = st.fixed_dictionaries(
    {"jobs": st.lists(listed_jobs, max_size=6)}, optional={"_links": next_links | json_values, "other": json_values}
)


@st.composite
def mangled_listing_pages(draw: st.DrawFn) -> bytes:
    """A listing page with a byte that is not UTF-8 in a job's name, which the running listing never reads."""
    page: dict[str, Any] = draw(listing_pages)
    page["jobs"].append({"id": "j", "state": "Active", "name": "MANGLED"})
    return _dump(page).replace(b"MANGLED", draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"a\xed\xa0\x80"])))


def _states_as_json_reads_them(api: ITwinApi, answer: Response) -> tuple[dict[str, JobState | None], str | None]:
    """The reference: the page read whole as ``read_ended`` reads it, each job's state as ``job_state`` reads it."""
    jobs, token = api._jobs_by_id(answer)
    return {job_id: itwin_module.job_state(job) for job_id, job in jobs.items()}, token


@pytest.mark.parametrize("api_name", ["realitydataanalysis", "reality-modeling"])
@PROPERTY
@given(
    body=listing_pages.map(_dump)
    | bodies
    | st.lists(listed_jobs, max_size=3).map(lambda jobs: _dump({"jobs": jobs}))
    | mangled_listing_pages()
)
@example(body=(Path(__file__).parent / "data" / "bentley" / "jobs_get_200.json").read_bytes())
@example(body=_dump({"jobs": [{"id": "only-an-id"}, {"id": "\ud800", "state": "Active"}]}))
@example(body=b'{"jobs": [{"id": "\\ud800", "state": "Active"}], "_links": {"next": {"href": "?continuationToken=t"}}}')
def test_the_running_listing_reads_a_page_as_its_whole_json_would(api_name: str, body: bytes) -> None:
    """Where the whole page reads as JSON, the two-field read gives the same states and the same next page;
    where it does not, a typed error or, when only fields it skips are unreadable, the states all the same."""
    api = itwin(api_name)
    answer = Response.build(200, {"content-type": "application/json"}, body)
    try:
        expected = _states_as_json_reads_them(api, answer)
    except VendorResponseError:
        _typed_or_value(lambda: api._states_of(answer))
        return
    states, token = api._states_of(answer)
    assert ({job_id: itwin_module.state_named(name) for job_id, name in states.items()}, token) == expected
