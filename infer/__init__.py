"""HDR reconstruction of aligned exposure windows (classical baseline; networks later)."""
