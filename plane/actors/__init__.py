"""What a backend is and does: the pure lifecycle decider and the trio actors."""
