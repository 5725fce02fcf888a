"""Top-level conftest: loads the bnconform pytest plugin, which collects
``cases/**/*.yaml`` as a matrix of (case, adapter) cells."""

pytest_plugins = ["bnconform.plugin"]
