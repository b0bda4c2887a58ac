"""Frames to aligned exposure windows: decode, gamma-2.2 re-encoding, global alignment."""
