# hdrstream — two commands on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv/ in the repo root. torch is pinned and installed first:
# the pinned CPU build is what these machines carry; an unpinned torch would pull GBs of CUDA.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test bench install train-deps clean browser vdp

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hdrstream demo --out out/demo

# lint-imports: the architecture contracts of pyproject.toml ([tool.importlinter])
test: $(STAMP) browser
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

# the live-preview test drives headless Chromium (Debian's chromium + chromium-driver)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "warning: could not install chromium; the browser test will say it did not run"

bench: $(STAMP)
	$(PY) bench/stages.py
	$(PY) bench/transport.py

# training only: natural photos bundled in scikit-image's wheel (see training/sources.py)
train-deps: $(STAMP)
	$(PIP) install --quiet 'scikit-image>=0.22'

# ColorVideoVDP for `bench/quality.py --vdp`, in its own environment: cvvdp needs torchvision,
# and the torchvision wheels this disk carries are CUDA builds that import only beside their
# own torch (2.14.1), not the project's pinned CPU build. About 5.5 GB; run on the CPU.
VDP_VENV := .venv-vdp
VDP_TORCH ?= 2.14.1
VDP_TORCHVISION ?= 0.29.1
vdp: $(VDP_VENV)/.installed
$(VDP_VENV)/.installed:
	test -x $(VDP_VENV)/bin/python || $(PYTHON) -m venv $(VDP_VENV)
	$(VDP_VENV)/bin/pip install --quiet torch==$(VDP_TORCH) torchvision==$(VDP_TORCHVISION)
	$(VDP_VENV)/bin/pip install --quiet 'cvvdp>=0.5' torch==$(VDP_TORCH) torchvision==$(VDP_TORCHVISION)
	touch $@

clean:
	rm -rf $(VENV) $(VDP_VENV) out .pytest_cache
