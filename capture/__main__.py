"""`python -m capture` runs this stage as a service (same as `hdrstream capture`)."""
from hdrstream.service import stage_main

stage_main("capture")
