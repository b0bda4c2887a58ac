"""`python -m infer` runs this stage as a service (same as `hdrstream infer`)."""
from hdrstream.service import stage_main

stage_main("infer")
