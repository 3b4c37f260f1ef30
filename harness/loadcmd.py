"""``abtest load URL -n N [--version V]``: send N requests, print each answer, then the counts.

The command-line face of `abtest_harness.traffic.run_load` for a person at a terminal: bounded in
count and time, loopback only, each answer printed with the version that gave it, then the
counts per version and per error.
"""

from __future__ import annotations

import json
from typing import TextIO
from urllib.parse import urlsplit

from abtest_harness.routing import Request
from abtest_harness.traffic import CLASS_HEADER, LoadResult, Observation, loopback_target, run_load


def load_command(
    url: str,
    n: int,
    version: str | None,
    concurrency: int,
    out: TextIO,
    *,
    deadline_s: float = 60.0,
    timeout_s: float = 2.0,
) -> int:
    """Send `n` requests to `url` (with ``x-api-version: version`` if given); print as they come.

    Returns 0 when every request got a version's answer, 1 when some
    failed or did not complete in time, 2 for a bad target or arguments.
    """
    try:
        target = loopback_target(url)
        if n < 1:
            raise ValueError(f"-n must be >= 1, got {n}")
    except ValueError as exc:
        print(f"abtest load: {exc}", file=out)
        return 2
    query = urlsplit(url).query
    path = target.base_path or "/"
    if query:
        path = f"{path}?{query}"
    request = Request(
        label=f"header-{version}" if version else "weighted",
        path=path,
        headers={CLASS_HEADER: version} if version else {},
        authority=target.netloc,  # as curl would send it: the URL's host and port
    )
    base = f"http://{target.netloc}"

    def show(observation: Observation) -> None:
        if observation.outcome == observation.version:
            print(f"{json.dumps(observation.body)}  ({observation.version})", file=out, flush=True)
        else:
            why = observation.detail or (observation.body or "")[:200]
            source = f" from {observation.version}" if observation.version else ""
            print(f"[{observation.outcome}{source}] {why}", file=out, flush=True)

    try:
        result = run_load(base, [request], max_requests=n, deadline_s=deadline_s,
                          concurrency=max(1, min(concurrency, n)), timeout_s=timeout_s,
                          on_response=show)
    except ValueError as exc:
        print(f"abtest load: {exc}", file=out)
        return 2
    print(_summary(result, url, version, n), file=out, flush=True)
    complete = result.requests == n
    return 0 if complete and not result.errors else 1


def _summary(result: LoadResult, url: str, version: str | None, n: int) -> str:
    pinned = f" with {CLASS_HEADER}: {version}" if version else ""
    lines = [f"{result.requests} of {n} requests to {url}{pinned} in {max(result.elapsed_s, 0.0):.2f}s"
             f" ({result.requests_per_s:.0f}/s)"]
    outcomes = result.outcomes()
    total = max(result.requests, 1)
    for version_name in sorted(result.answers):
        count = outcomes.get(version_name, 0)
        bodies = ", ".join(f"{json.dumps(b)} x{c}" for b, c in sorted(result.answers[version_name].items()))
        lines.append(f"  {version_name}: {count} ({100.0 * count / total:.1f}%)  {bodies}")
    if result.errors:
        for outcome, count in sorted(result.errors.items()):
            lines.append(f"  {outcome}: {count} ({100.0 * count / total:.1f}%)")
    else:
        lines.append("  errors: none")
    if result.requests < n:
        lines.append(f"  stopped by {result.stopped_by} after {result.requests} of {n} requests")
    return "\n".join(lines)
