"""plane-replay: rebuild and check state from an event log."""
