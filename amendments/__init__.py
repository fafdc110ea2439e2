"""amendments package."""
