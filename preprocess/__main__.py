"""`python -m preprocess` runs this stage as a service (same as `hdrstream preprocess`)."""
from hdrstream.service import stage_main

stage_main("preprocess")
