"""The ground floor's own `slb` commands, each plugged in by entry point like the wings'."""
