"""`python -m sink` runs this stage as a service (same as `hdrstream sink`)."""
from hdrstream.service import stage_main

stage_main("sink")
