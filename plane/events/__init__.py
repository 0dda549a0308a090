"""What happened: event types, their wire format and the stores that keep them."""
