"""rotator: zero-downtime rotation of Funnelback application tokens."""

__version__ = "0.1.0"
