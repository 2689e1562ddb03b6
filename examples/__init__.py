"""Example applications built on trio-channels."""
