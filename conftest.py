"""Root conftest: this repository's own test layout; the plugin comes from the package.

The pytest plugin (fixtures/plugin.py) is registered by the package's ``pytest11`` entry
point, as in any repository that installs it (``make venv`` installs this checkout). Only
where that did not happen (the checkout is not installed, or plugin autoloading is off) is it
loaded here: loading it twice would make pytest refuse to start.

pytester runs the plugin in throw-away sessions (tests/e2e/test_plugin.py).
"""

from __future__ import annotations

import sys

import pytest

PLUGIN = "abtest_harness_pytest.plugin"

# The entry point imports the plugin before pytest reads any conftest; nothing else imports it.
pytest_plugins = ["pytester"] if PLUGIN in sys.modules else ["pytester", PLUGIN]


@pytest.hookimpl(trylast=True)  # after the plugin's, which marks the tests that use the mesh
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """This repository's layout: tests/e2e/ is e2e and runs last; cluster-only tests need --abtest-mesh=kind|cluster.

    With --abtest-judge-live nothing is applied, so the tests that change the rollout (the walk
    through every stage, the injected faults) are skipped.
    """
    mesh = config.getoption("abtest_mesh")
    for item in items:
        in_e2e = "e2e" in item.path.parts and "tests" in item.path.parts
        if in_e2e:
            item.add_marker(pytest.mark.e2e)
        on_cluster = mesh in ("kind", "cluster")
        if item.get_closest_marker("kind") and not on_cluster:
            item.add_marker(pytest.mark.skip(reason="needs a cluster: run `make e2e` (--abtest-mesh=kind)"))
        if on_cluster and in_e2e and not item.get_closest_marker("abtest"):
            # Tests of the local mesh itself (Envoy translation, plugin, CLI): `make test` runs them.
            item.add_marker(pytest.mark.skip(reason="local-mesh test; `make test` runs it"))
        if config.getoption("abtest_judge_live") and item.path.name in ("test_walk.py", "test_faults.py"):
            item.add_marker(pytest.mark.skip(reason="--abtest-judge-live applies nothing; this test edits the rollout"))
    # e2e last: a broken unit should be seen before minutes of mesh work.
    items.sort(key=lambda i: 1 if i.get_closest_marker("e2e") else 0)
