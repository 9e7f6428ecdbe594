"""dlpl_jax.host.configure: the XLA:CPU flag (only for the jaxlib it was measured with, only
without a GPU/TPU, never over an XLA_FLAGS already set) and TensorFlow's log level; it
does not look for data (TFDS's own rule decides where the data is)."""

import pytest

from dlpl_jax import host

TF_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


@pytest.fixture
def installed(monkeypatch):
  """``installed(**versions)``: the distributions host sees (jaxlib at the flag's version
  unless given; ``jax_cuda12_plugin="0.10.2"`` etc.; anything else absent)."""
  def set_versions(**versions):
    known = {"jaxlib": host.CPU_FLAG_JAXLIB,
             **{k.replace("_", "-"): v for k, v in versions.items()}}
    monkeypatch.setattr(host, "_installed", known.get)
  set_versions()
  return set_versions


@pytest.mark.parametrize("platforms", [None, "", "cpu"])
def test_cpu_only_host_gets_the_flag_and_tensorflow_is_quiet(installed, platforms):
  del installed
  environ = {} if platforms is None else {"JAX_PLATFORMS": platforms}
  before = dict(environ)
  out = host.configure(environ)
  assert out == {"XLA_FLAGS": host.CPU_FLAG, **TF_QUIET}
  assert environ == {**before, **out}  # what it returns is what it set
  assert host.configure(environ) == {}  # a second call changes nothing


@pytest.mark.parametrize("environ", [
    {"XLA_FLAGS": ""},  # set, even empty: left alone
    {"XLA_FLAGS": "--xla_dump_to=/tmp/x"},
    {"JAX_PLATFORMS": "cuda"},
    {"JAX_PLATFORMS": "tpu"},
    {"JAX_PLATFORMS": "cpu,cuda"},
])
def test_no_flag_over_the_users_flags_or_with_an_accelerator_platform(installed, environ):
  del installed
  before = dict(environ)
  assert host.configure(environ) == TF_QUIET
  assert environ == {**before, **TF_QUIET}


@pytest.mark.parametrize("versions", [
    {"jax_cuda12_plugin": "0.10.2"}, {"jax_cuda13_plugin": "0.10.2"}, {"libtpu": "0.0.20"},
    {"libtpu_nightly": "0.1"},
    {"jaxlib": "0.10.1"},  # XLA aborts on a flag it does not know: only the measured jaxlib
    {"jaxlib": None},
])
def test_no_flag_with_an_accelerator_plugin_or_another_jaxlib(installed, versions):
  installed(**versions)
  environ = {"JAX_PLATFORMS": "cpu"}
  assert "XLA_FLAGS" not in host.configure(environ) and "XLA_FLAGS" not in environ


def test_tensorflow_settings_of_the_user_are_kept(installed):
  del installed
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "1"}
  assert host.configure(environ) == {"XLA_FLAGS": host.CPU_FLAG}
  assert environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_it_does_not_look_for_data(installed, tmp_path, monkeypatch):
  """No TFDS_DATA_DIR is set, even from a checkout with a prepared copy beside it."""
  del installed
  (tmp_path / "shared" / "tensorflow_datasets" / "cifar10").mkdir(parents=True)
  (tmp_path / "repo").mkdir()
  monkeypatch.chdir(tmp_path / "repo")
  environ = {}
  out = host.configure(environ)
  assert "TFDS_DATA_DIR" not in out and "TFDS_DATA_DIR" not in environ
  assert set(out) == {"XLA_FLAGS", *TF_QUIET}


def test_the_installed_versions_decide():
  """With the real installed distributions: the flag exactly where the jaxlib is the
  measured one and no accelerator plugin is installed."""
  # pylint: disable=protected-access
  expect = (host._installed("jaxlib") == host.CPU_FLAG_JAXLIB
            and not any(host._installed(p) for p in host._ACCELERATOR_PLUGINS))
  assert ("XLA_FLAGS" in host.configure({"JAX_PLATFORMS": "cpu"})) is expect
