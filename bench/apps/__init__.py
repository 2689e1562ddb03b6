"""Servers under benchmark; each prints a readiness line and serves until SIGTERM."""
