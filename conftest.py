"""Root conftest: loads the harness's pytest plugin (fixtures/), which only wires the library in.

pytester runs the plugin's own tests (tests/unit/test_plugin.py) in throw-away sessions.
"""

pytest_plugins = ["fixtures.plugin", "pytester"]
