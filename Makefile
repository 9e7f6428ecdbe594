# dlpl_jax — two commands do all the set-up:
#   make train   [CONFIG=experiments/cifar10_4shot.py] [WORKDIR=runs/NAME] [ARGS="--config.x=y"]
#   make test    (fast suite; `make test-slow` adds the slow marker)
# On a GPU host the venv gets jax[cuda12] automatically; ACCEL=cpu|cuda12|cuda13|tpu overrides.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
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

CONFIG  ?= experiments/cifar10_4shot.py
WORKDIR ?= runs/$(basename $(notdir $(firstword $(subst :, ,$(CONFIG)))))$(if $(findstring :,$(CONFIG)),-$(lastword $(subst :, ,$(CONFIG))))
ARGS    ?=
# The offline CIFAR-10 beside the checkout, when present (see ../shared/DATA.md).
ifneq ($(wildcard ../shared/tensorflow_datasets),)
export TFDS_DATA_DIR ?= $(abspath ../shared/tensorflow_datasets)
endif
export TF_CPP_MIN_LOG_LEVEL ?= 2
# XLA:CPU only (ignored by GPU/TPU backends): convolutions through Eigen instead of
# YNNPACK, whose kernel gradients are slow; halves the CPU train step with the pinned
# jaxlib 0.10.2 (experiments/results/bench_cpu.md). An unknown flag aborts XLA, so it is
# tied to the pinned version: override with XLA_FLAGS= when using another jaxlib. Set
# for ACCEL=cpu only, so a GPU/TPU venv's XLA never sees it.
ifeq ($(ACCEL),cpu)
export XLA_FLAGS ?= --xla_cpu_experimental_ynn_fusion_type=-individual_convolution
endif

.PHONY: install train test test-slow bench analyze study clean

# (Re)install when the venv is missing or pyproject.toml / the lock changed.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]' \
	  $(if $(filter-out cpu,$(ACCEL)),'jax[$(ACCEL)]')
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m dlpl_jax.main --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) -m dlpl_jax.bench --config=$(CONFIG) $(ARGS)

analyze: $(STAMP)
	$(PY) -m dlpl_jax.analyze $(WORKDIR) $(ARGS)

# The CPU study (experiments/study_cpu.py): 2 methods x 2 seeds, table + plots.
study: $(STAMP)
	$(PY) -m experiments.run_study $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
