"""Support code of the reliability suite: a reference model of the store protocol, store
factories for tests, and the worker and supervisor of the crash tests."""
