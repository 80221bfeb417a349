"""Pure decision code: no KSR, no YAML, no clock, no I/O (a test enforces it)."""
