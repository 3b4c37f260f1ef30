"""Root conftest: loads the harness's pytest plugin (fixtures/), which only wires the library in."""

pytest_plugins = ["fixtures.plugin"]
