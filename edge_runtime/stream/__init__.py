"""Streaming sensor input: wire codec, sources, windows, in-place preprocessing."""
