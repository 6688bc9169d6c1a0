# The few commands everyone uses. Each installs what it needs first.
#   make demo    the whole kit on this machine (edgefleet demo; Ctrl-C stops it)
#   make test    lint, types and the whole test suite
#   make bench   benchmarks into BENCHMARKS.md
#   make fuzz-api  schemathesis over every fleet API operation, 500 examples each (CI: 5)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: demo test bench fuzz-api lint typecheck system-deps tflite-tools test-models clean screenshots

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edgefleet needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	# the CPU build of PyTorch (the tests convert a torch module); a bare 'torch' would
	# pull the CUDA build, several GB. Elsewhere: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet 'torch==$(TORCH_VERSION)' $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	@touch $(STAMP)

# What the tests run against, installed with apt-get when missing (as root): Mosquitto (also
# for --mqtt-url users), Debian's Chromium with its driver (the console's browser tests), and
# libfuse 3 with fusermount3 (the power-cut tests' FUSE file system, tests/harness/lazyfs.py),
# debootstrap and qemu-user-static (the arm64 image tests, tests/integration/test_arm64_image.py).
SYSTEM_PACKAGES := mosquitto:/usr/sbin/mosquitto chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver fuse3:/usr/bin/fusermount3 debootstrap:/usr/sbin/debootstrap qemu-user-static:/usr/bin/qemu-aarch64-static

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_PACKAGES); do \
		path=$${pair#*:}; \
		command -v $$(basename $$path) >/dev/null 2>&1 || [ -x $$path ] || missing="$$missing $${pair%%:*}"; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "Error: missing system packages:$$missing; install them (Debian/Ubuntu: sudo apt-get install$$missing) and run make again" >&2; \
		exit 1; \
	fi
	@# bookworm's qemu-user 7.2 dies loading onnxruntime 1.32's aarch64 library; 8 and newer run
	@# it (the arm64 image test skips, saying so, where it cannot be had): bookworm-backports' one
	@qemu_major=$$(qemu-aarch64 --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\).*/\1/p'); \
	if [ -n "$$qemu_major" ] && [ "$$qemu_major" -lt 8 ] && [ "$$(id -u)" = 0 ] \
		&& grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null && command -v apt-get >/dev/null 2>&1; then \
		echo "installing qemu-user-static from bookworm-backports (qemu-aarch64 $$qemu_major is too old for onnxruntime)"; \
		printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			> /etc/apt/sources.list.d/edgefleet-backports.sources; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user-static >/dev/null \
			|| echo "warning: qemu-user-static from bookworm-backports could not be installed; the arm64 serving test will skip" >&2; \
		if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64 || true; fi; \
	fi

# onnx2tf's own environment (TensorFlow 2.19, numpy 1.26; about 2.6 GB), built once into
# ~/.cache/edgefleet/tools (EDGEFLEET_TOOLS_DIR moves it) and reused: the TFLite tests need it.
tflite-tools: $(STAMP)
	$(VENV)/bin/edgefleet convert --setup tflite

# mediapipe's wheel (its 14 .tflite models, read with zipfile; never installed: it pins
# numpy<2), fetched once into ~/.cache/edgefleet/test-models: the .tflite import tests need it.
test-models: $(STAMP)
	$(PY) -m tests.harness.mediapipe

demo: $(STAMP)
	$(VENV)/bin/edgefleet demo

bench: $(STAMP)
	$(PY) -m bench.run

fuzz-api: $(STAMP)
	EDGEFLEET_FUZZ_EXAMPLES=$${EDGEFLEET_FUZZ_EXAMPLES:-500} $(PY) -m pytest tests/fleet_server/test_api_fuzz.py -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-deps tflite-tools test-models lint typecheck
	$(PY) -m pytest

# the console's browser tests, saving their screenshots where docs/console.md shows them
screenshots: $(STAMP) system-deps
	EDGEFLEET_SCREENSHOTS=$(CURDIR)/docs/console $(PY) -m pytest tests/console

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
