"""constitution package."""
