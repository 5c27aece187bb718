"""Test doubles that speak the real wire protocols (Funnelback admin API emulator)."""
