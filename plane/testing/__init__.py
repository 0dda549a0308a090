"""Test support shipped with plane, like ``trio.testing``: a fake executor for fast
deterministic tests, the registry-free busybox test image, and ``plane serve`` as a
child process for end-to-end tests and benchmarks."""
