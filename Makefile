# dlpl_jax — two commands do all the set-up:
#   make train   [CONFIG=experiments/cifar10_4shot.py] [WORKDIR=runs/NAME] [ARGS="--config.x=y"]
#   make test    (unit and small integration tests; `make test-e2e`: the end-to-end tier)
# Where nvidia-smi sees a GPU the venv gets jax[cuda12]; ACCEL=cpu|cuda12|cuda13|tpu overrides.
# The XLA:CPU flag and TensorFlow's log level are set by the package itself
# (dlpl_jax/host.py), the same for `make` and `python -m dlpl_jax.main`. The data follows
# TFDS: TFDS_DATA_DIR, else ~/tensorflow_datasets; a prepared copy in
# ../shared/tensorflow_datasets serves when TFDS_DATA_DIR is unset.
ifeq ($(TFDS_DATA_DIR),)
ifneq ($(wildcard ../shared/tensorflow_datasets),)
export TFDS_DATA_DIR := $(abspath ../shared/tensorflow_datasets)
endif
endif
VENV   ?= .venv
PY     := $(VENV)/bin/python
,      := ,
PYOK   := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))
# The first of python3.12, python3.11, python3 that is 3.11 or 3.12 (PYTHON=... overrides).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
            if command -v $$p >/dev/null 2>&1 && $$p -c '$(PYOK)' 2>/dev/null; then \
              echo $$p; break; fi; done)
# The JAX backend the venv gets, at the pinned jax/jaxlib version: cpu, cuda12 or cuda13
# (jax[cudaNN]: CUDA and cuDNN from pip, an NVIDIA driver is all the host needs) or tpu
# (jax[tpu]). Default: cuda12 where nvidia-smi sees a GPU, tpu on a Cloud TPU VM, else cpu.
ifndef ACCEL
ACCEL  := $(shell if nvidia-smi -L >/dev/null 2>&1; then echo cuda12; \
            elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ]; then echo tpu; else echo cpu; fi)
endif
ifeq ($(filter cpu cuda12 cuda13 tpu,$(ACCEL)),)
$(error ACCEL must be cpu, cuda12, cuda13 or tpu, got '$(ACCEL)')
endif
STAMP  := $(VENV)/.installed-$(ACCEL)

# `make train` / `make bench` with no CONFIG: the paper's setting on a GPU/TPU; on a
# CPU-only host, its smoke variant (the full config needs a GPU/TPU: the trainer says so
# and refuses it on a CPU unless ARGS=--allow_cpu).
ifeq ($(origin CONFIG),undefined)
ifeq ($(ACCEL),cpu)
CONFIG   := experiments/cifar10_4shot.py:smoke
CPU_NOTE := CPU-only host: running the smoke variant. The paper's config \
  (CONFIG=experiments/cifar10_4shot.py) needs a GPU/TPU; on a CPU it stops at once with its estimated time.
else
CONFIG   := experiments/cifar10_4shot.py
endif
endif
# No WORKDIR: the trainer names it runs/<config>[-<variant>][-<overrides>].
WORKDIR ?=
ARGS    ?=

.PHONY: install train test test-e2e bench analyze study study-imbalanced clean

# (Re)install when the venv is missing or pyproject.toml / the lock changed. A venv made
# with an unsupported Python, or left by a failed install, is removed first.
$(STAMP): pyproject.toml requirements.lock
	@if [ -z "$(PYTHON)" ] || ! $(PYTHON) -c '$(PYOK)' 2>/dev/null; then \
	  echo "error: dlpl_jax needs Python 3.11 or 3.12; $(if $(PYTHON),PYTHON=$(PYTHON) is $$($(PYTHON) -V 2>&1 | head -1),none of python3.12$(,) python3.11$(,) python3 is one). Install one, or pass PYTHON=/path/to/python3.12" >&2; \
	  exit 2; fi
	@if [ -e $(VENV) ] && ! $(PY) -c '$(PYOK)' 2>/dev/null; then \
	  echo "removing $(VENV): it was made with an unsupported Python"; rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[train,tensorflow,analyze,test]' \
	  $(if $(filter-out cpu,$(ACCEL)),'jax[$(ACCEL)]') \
	  || { rm -rf $(VENV); echo "error: the install failed; $(VENV) was removed, so the next attempt starts clean" >&2; exit 1; }
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	@$(if $(CPU_NOTE),echo "$(CPU_NOTE)")
	$(PY) -m dlpl_jax.main --config=$(CONFIG) $(if $(WORKDIR),--workdir=$(WORKDIR)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests dlpl_jax --ignore=tests/e2e $(ARGS)

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e $(ARGS)

bench: $(STAMP)
	@$(if $(CPU_NOTE),echo "$(CPU_NOTE)")
	$(PY) -m dlpl_jax.bench --config=$(CONFIG) $(ARGS)

analyze: $(STAMP)
	@test -n "$(WORKDIR)" || { echo "usage: make analyze WORKDIR=runs/NAME [ARGS=runs/OTHER]" >&2; exit 2; }
	$(PY) -m dlpl_jax.analyze $(WORKDIR) $(ARGS)

# The CPU studies: 2 methods x 2 seeds, table + plots. `study`: balanced CIFAR-10, 4
# labels per class (experiments/study_cpu.py); `study-imbalanced`: CIFAR-10-LT and the
# mismatch setting (experiments/study_imbalanced.py). Their run times on 2 vCPUs are in
# experiments/results/study_*.md. Both resume where they stopped.
study: $(STAMP)
	$(PY) -m experiments.run_study $(ARGS)

study-imbalanced: $(STAMP)
	$(PY) -m experiments.run_study --study=imbalanced $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
