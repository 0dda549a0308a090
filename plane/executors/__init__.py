"""How a backend runs: the Executor protocol (base), Docker containers (docker) and
local process groups (process), and the shared readiness probe (readiness)."""
