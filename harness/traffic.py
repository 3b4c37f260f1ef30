"""The load run: send request classes to the gateway, classify every answer, feed the tests.

`run_load` keeps `concurrency` requests in flight (`abtest_harness.http1.EventLoop`, one keep-alive
connection each), round-robin over the request classes that have not been decided yet. Every
complete answer goes through a classifier, ``classify(status, headers) -> outcome``; failures
to get an answer are outcomes of their own:

==============================================  =====================================
what came back                                  outcome
==============================================  =====================================
an answer                                       ``classify(status, headers)``
no answer within the timeout                    ``error:timeout``
refused, reset or closed connection             ``error:connection``
anything else (malformed HTTP, huge body, ...)  ``error:other``
==============================================  =====================================

The default classifier, `by_version_header`, reads the answer's ``x-model-version`` header:
status < 400 with the header gives the version, anything else ``status:NNN`` (a 4xx/5xx is an
error even when it names a version). Another reading, such as attributing the answer by the
endpoint the gateway chose, plugs in as `classify` without this module knowing about
versions. `by_attribution` builds that classifier from a ``abtest_harness.attribution`` mapping (``attribute=``
on `run_load` is a shorthand for it). An outcome is a version's unless it starts with
``status:`` or ``error:`` (``error:unattributed:<host>`` for an answer no version can be
credited with); only a version's answers are kept in `LoadResult.answers`.

Each outcome is fed live to the class's sequential test (`abtest_harness.stats.SequentialTest`) and
the run stops as soon as every class has decided; a decided class gets no more requests (the
answers still in flight when it decided reach its test, which counts them as late). Every
run is also bounded by `max_requests` and `deadline_s`.

Load goes to loopback targets only, with one exception: the gateway URL a user named for a
cluster they run (``--mesh cluster --gateway-url``). A mesh that has such a URL says so in
its ``allowed_gateway_url`` attribute (`allowed_url_of` reads it; only
`abtest_harness.mesh.cluster.ClusterMesh` has one), and `run_load` sends to a non-loopback URL only
when it is passed that same URL as ``allowed_url``: no switch or environment variable widens it.
Throughput against ``hey`` is measured by ``python -m bench.bench_traffic`` (``make bench``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from abtest_harness.http1 import (
    OUTCOME_CONNECTION,
    OUTCOME_OTHER,
    OUTCOME_TIMEOUT,
    Answer,
    EventLoop,
    Failure,
    NotLoopback,
    Prepared,
    Request,
    Taken,
    Target,
    UnresolvedTarget,
    load_target,
    loopback_target,
    prepare,
)

__all__ = [
    "CLASS_HEADER", "OUTCOME_CONNECTION", "OUTCOME_OTHER", "OUTCOME_TIMEOUT", "UPSTREAM_HOST_HEADER",
    "VERSION_HEADER", "Attribute", "Classifier", "LiveTest", "LoadResult", "NotLoopback", "Observation",
    "RequestClass", "Target", "UnresolvedTarget", "allowed_url_of", "by_attribution", "by_version_header", "is_version",
    "load_target", "loopback_target", "run_load",
]

VERSION_HEADER = "x-model-version"
"""Response header that names the version that answered (the Deployment's MODEL_VERSION)."""

CLASS_HEADER = "x-api-version"
"""Request header that pins a request to one version (the VirtualService's header routes)."""

UPSTREAM_HOST_HEADER = "x-abtest-upstream-host"
"""Response header the harness's gateway adds: the ``ip:port`` of the endpoint it chose."""

_MAX_DETAILS = 20
_ANSWER_CACHE = 256

RequestClass = Request
"""What the run needs of a request class; `abtest_harness.routing.Request` has this shape."""

Classifier = Callable[[int, Mapping[str, str]], str]
"""``classify(status, headers) -> outcome``; header names are lower-case."""


def by_version_header(status: int, headers: Mapping[str, str]) -> str:
    """The version an answer names in ``x-model-version``, if its status is < 400; else ``status:NNN``.

    >>> by_version_header(200, {"x-model-version": "blue"}), by_version_header(503, {"x-model-version": "blue"})
    ('blue', 'status:503')
    """
    version = headers.get(VERSION_HEADER)
    if version is not None and status < 400:
        return version
    return f"status:{status}"


Attribute = Callable[[str | None, str | None], str | None]
"""``attribute(upstream_host, version_header) -> version``, an ``error:...`` outcome, or None."""


def by_attribution(attribute: Attribute) -> Classifier:
    """The classifier of an attribution: a status < 400 is credited as `attribute` says
    (None: ``status:NNN``); a 4xx/5xx stays ``status:NNN``."""

    def classify(status: int, headers: Mapping[str, str]) -> str:
        if status >= 400:
            return f"status:{status}"
        found = attribute(headers.get(UPSTREAM_HOST_HEADER), headers.get(VERSION_HEADER))
        return found if found is not None else f"status:{status}"

    return classify


def allowed_url_of(mesh: object) -> str | None:
    """The one non-loopback URL `mesh`'s load may go to (its ``allowed_gateway_url``), or None.

    None for every mesh but ``--mesh cluster``, whose value is the ``--gateway-url`` the user gave.
    """
    url = getattr(mesh, "allowed_gateway_url", None)
    return url if isinstance(url, str) and url else None


def is_version(outcome: str) -> bool:
    """True when `outcome` names a version (it does not start with ``status:`` or ``error:``)."""
    return not outcome.startswith(("status:", "error:"))


class LiveTest(Protocol):
    """What the run needs of a sequential test; `abtest_harness.stats.SequentialTest` has it."""

    def observe(self, outcome: str) -> Any: ...

    @property
    def decision(self) -> Any: ...

    def verdict(self) -> Any: ...


@dataclass(frozen=True)
class Observation:
    """One classified answer, as `on_response` receives it.

    `outcome` is what the classifier said (a version or ``status:NNN``), or ``error:KIND``;
    `version` is the ``x-model-version`` header whatever the status (None when absent);
    `body` is the answer (a JSON string body decoded to its text, other bodies as text);
    `detail` says what went wrong for errors; `headers` are the answer's (lower-case names).
    """

    label: str
    outcome: str
    status: int | None
    body: str | None
    elapsed_s: float
    version: str | None = None
    detail: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    """Everything a run saw.

    `counts`: label -> outcome -> answers; `answers`: version -> answer body -> count;
    `errors`: non-version outcome -> count over all classes; `verdicts`: label -> the test's
    verdict (only when tests were given); `requests`: answers classified (including errors);
    `abandoned`: requests cut off by the deadline, which are not counted anywhere since their
    timeout was the run's, not the target's; `stopped_by`: ``decided``, ``max_requests``,
    ``deadline`` or ``interrupted``; `error_details`: the first few error messages.
    """

    counts: dict[str, dict[str, int]]
    answers: dict[str, dict[str, int]]
    errors: dict[str, int]
    verdicts: dict[str, Any]
    requests: int
    elapsed_s: float
    stopped_by: str
    abandoned: int = 0
    error_details: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        """Answers per second over the whole run."""
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def outcomes(self) -> dict[str, int]:
        """Outcome -> count, summed over all classes."""
        total: dict[str, int] = {}
        for per_label in self.counts.values():
            for outcome, n in per_label.items():
                total[outcome] = total.get(outcome, 0) + n
        return total


def _is_open(test: LiveTest) -> bool:
    decision = test.decision
    return bool(getattr(decision, "name", decision) == "CONTINUE")


class _Run:
    """One run's state and the event loop's driver: hands out requests, counts and feeds answers."""

    def __init__(
        self,
        prepared: Mapping[str, Prepared],
        tests: Mapping[str, LiveTest] | None,
        max_requests: int,
        deadline: float,
        timeout_s: float,
        on_response: Callable[[Observation], None] | None,
        classify: Classifier,
    ) -> None:
        self.tests = tests
        self.max_requests = max_requests
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.on_response = on_response
        self.classify = classify
        self.tickets = itertools.count()
        self.stopped_by = ""
        self.counts: dict[str, dict[str, int]] = {}
        self.answers: dict[str, dict[str, int]] = {}
        self.abandoned = 0
        self.details: list[str] = []
        self._decoded: dict[bytes, str] = {}
        self.active: tuple[Prepared, ...] = tuple(
            p for label, p in prepared.items() if tests is None or _is_open(tests[label])
        )
        if not self.active:
            self.stopped_by = "decided"

    @property
    def stopped(self) -> bool:
        return bool(self.stopped_by)

    def stop(self, reason: str) -> None:
        """Stop handing out requests; the first reason given is the one reported."""
        if not self.stopped_by:
            self.stopped_by = reason

    def take(self) -> Taken | None:
        """The next request: round-robin over the open classes, within the count and the deadline."""
        if self.stopped_by:
            return None
        if not self.active:
            self.stop("decided")
            return None
        ticket = next(self.tickets)
        if ticket >= self.max_requests:
            self.stop("max_requests")
            return None
        started = time.monotonic()
        remaining = self.deadline - started
        if remaining <= 0:
            self.stop("deadline")
            return None
        budget = self.timeout_s if self.timeout_s <= remaining else remaining
        return self.active[ticket % len(self.active)], started, budget

    def finish(self, taken: Taken, answer: Answer | None, failure: Failure | None) -> bool:
        """Classify, count and feed one exchange; False if the deadline cut it (dropped, not counted)."""
        request, started, budget = taken
        status: int | None = None
        version: str | None = None
        text: str | None = None
        headers: Mapping[str, str] = {}
        detail = ""
        if failure is not None:
            if failure.kind == OUTCOME_TIMEOUT and budget < self.timeout_s:
                self.abandoned += 1  # the run's deadline timed it out, not the target
                self.stop("deadline")
                return False
            outcome = failure.kind
            detail = str(failure)
            self._detail(f"{request.label}: {outcome}: {detail}")
        else:
            assert answer is not None
            status, headers = answer.status, answer.headers
            version = headers.get(VERSION_HEADER)
            text = self._text(answer.body)
            outcome = self.classify(status, headers)
            if is_version(outcome):
                per_version = self.answers.setdefault(outcome, {})
                per_version[text] = per_version.get(text, 0) + 1
            else:
                self._detail(f"{request.label}: {outcome}: {text[:200]}")
        per_label = self.counts.setdefault(request.label, {})
        per_label[outcome] = per_label.get(outcome, 0) + 1
        if self.tests is not None or self.on_response is not None:
            self._feed(Observation(request.label, outcome, status, text, time.monotonic() - started,
                                   version, detail, headers))
        return True

    def _feed(self, observation: Observation) -> None:
        if self.tests is not None:
            test = self.tests[observation.label]
            was_open = _is_open(test)
            # An answer that was in flight when its class decided is still given to the test:
            # SequentialTest counts it as late and leaves the final decision alone.
            test.observe(observation.outcome)
            if was_open and not _is_open(test):
                self.active = tuple(p for p in self.active if p.label != observation.label)
                if not self.active:
                    self.stop("decided")
        if self.on_response is not None:
            self.on_response(observation)

    def _detail(self, line: str) -> None:
        if len(self.details) < _MAX_DETAILS:
            self.details.append(line)

    def _text(self, body: bytes) -> str:
        """The answer as text: a JSON string body decoded to its value, else the raw text."""
        text = self._decoded.get(body)
        if text is None:
            raw = body.decode("utf-8", "replace")
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            text = value if isinstance(value, str) else raw
            if len(self._decoded) < _ANSWER_CACHE:
                self._decoded[body] = text
        return text


def run_load(
    base_url: str,
    classes: Sequence[RequestClass],
    tests: Mapping[str, LiveTest] | None = None,
    *,
    max_requests: int,
    deadline_s: float,
    concurrency: int = 4,
    timeout_s: float = 2.0,
    on_response: Callable[[Observation], None] | None = None,
    classify: Classifier = by_version_header,
    attribute: Attribute | None = None,
    allowed_url: str | None = None,
) -> LoadResult:
    """Send the request classes round-robin to `base_url` until decided or out of budget.

    `base_url` (``http://127.0.0.1:PORT``, optionally with a path prefix) must be loopback,
    else `NotLoopback`, unless `allowed_url` is given: then `base_url` must be exactly that
    URL, wherever it is (the gateway of ``--mesh cluster``; pass ``allowed_url_of(mesh)``).
    `tests` maps each class label to its live sequential test; the run
    stops when all have decided. It always stops after `max_requests` requests or
    `deadline_s` seconds, whichever comes first: a request's timeout is cut to the time left,
    and a request cut off that way is dropped (counted in `abandoned`). `concurrency`
    requests are in flight at once, each on its own keep-alive connection. `classify` turns
    an answer's status and headers into its outcome (`attribute`, if given, instead: see
    `by_attribution`). `on_response` is called once per answer, in the calling thread, one call
    at a time.
    """
    if attribute is not None:
        if classify is not by_version_header:
            raise ValueError("give classify or attribute, not both")
        classify = by_attribution(attribute)
    target = load_target(base_url, allowed=allowed_url)
    if max_requests < 0:
        raise ValueError(f"max_requests must be >= 0, got {max_requests}")
    if deadline_s <= 0 or timeout_s <= 0:
        raise ValueError(f"deadline_s and timeout_s must be > 0, got {deadline_s} and {timeout_s}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not classes:
        raise ValueError("no request classes to send")
    labels = [c.label for c in classes]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"request class labels must be unique; repeated: {', '.join(duplicates)}")
    if tests is not None and set(tests) != set(labels):
        raise ValueError(
            f"tests must cover exactly the request classes: classes {sorted(labels)}, "
            f"tests {sorted(tests)}"
        )
    prepared = {c.label: prepare(target, c) for c in classes}

    started = time.monotonic()
    run = _Run(prepared, tests, max_requests, started + deadline_s, timeout_s, on_response, classify)
    if max_requests == 0:
        run.stop("max_requests")
    try:
        EventLoop(run, target).run_until_done(max(1, min(concurrency, max_requests)))
    except BaseException:
        run.stop("interrupted")
        raise
    elapsed = time.monotonic() - started
    if not run.stopped_by:
        run.stop("deadline" if time.monotonic() >= run.deadline else "max_requests")
    return _result(run, labels, elapsed)


def _result(run: _Run, labels: Sequence[str], elapsed: float) -> LoadResult:
    counts = {label: dict(run.counts.get(label, {})) for label in labels}
    errors: dict[str, int] = {}
    for per_label in counts.values():
        for outcome, n in per_label.items():
            if not is_version(outcome):
                errors[outcome] = errors.get(outcome, 0) + n
    verdicts = {label: test.verdict() for label, test in run.tests.items()} if run.tests else {}
    total = sum(sum(per.values()) for per in counts.values())
    return LoadResult(counts, run.answers, errors, verdicts, total, elapsed, run.stopped_by, run.abandoned,
                      run.details[:_MAX_DETAILS])

