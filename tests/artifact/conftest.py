"""The weights-registry fixtures (a local HTTP server, temporary bundles, $VOLMAE_HOME): tests/artifact/weights.py."""

from tests.artifact.weights import hub_env, server  # noqa: F401 - fixtures
