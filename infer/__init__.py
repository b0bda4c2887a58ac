"""HDR reconstruction of aligned exposure windows: classical, the coarse-to-fine network, reference only."""
