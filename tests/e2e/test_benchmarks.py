"""The benchmark scripts end to end: benchmarks/trainer_throughput.py runs the real
trainer on synthetic data and reports its rate per log window and where the loop's host
time per step goes. No timing assertions (only that the numbers are there and positive)."""

import json


def test_trainer_throughput_script_reports_window_rates(tmp_path, python):
  out = python(
      ["-m", "benchmarks.trainer_throughput",
       "--config", "experiments/cifar10_4shot.py:smoke", "--steps", "64",
       "--log_every", "32", "--work_every", "64", "--unlabeled", "200", "--test", "256",
       "--dtype", "float32", "--workdir", str(tmp_path / "w"), "--host_breakdown",
       "--json", str(tmp_path / "out" / "tp.json")], timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "trainer steps/s per window of 32 steps:" in out.stdout
  rates = out.stdout.split("steps:")[1].split("\n")[0].split()
  assert len(rates) == 2 and all(float(r) > 0 for r in rates)
  # The second window follows no evaluation or checkpoint: it makes the median.
  assert "trainer steps/s, median of windows without eval/checkpoint" in out.stdout
  assert "host time per step, over the 63 steps after the compiling first one:" in out.stdout
  assert "= loop minus back to back (host cost added by the loop)" in out.stdout
  r = json.loads((tmp_path / "out" / "tp.json").read_text())
  assert (r["model"], r["dtype"], r["steps"], r["log_every"]) == ("cnn_small", "float32",
                                                                   64, 32)
  assert len(r["window_steps_per_sec"]) == 2 and r["median_steps_per_sec"] > 0
  assert r["host"]["loop wall per step"] > 0 and r["host"]["back-to-back step"] > 0
  assert {"step dispatch", "wait for the device"} <= set(r["host"]["per_step_us"])
  assert (tmp_path / "w" / "summary.json").is_file()  # the real trainer's run folder


def test_trainer_throughput_script_refuses_too_few_steps(tmp_path, python):
  out = python(["-m", "benchmarks.trainer_throughput", "--steps", "10", "--log_every",
                "8", "--workdir", str(tmp_path / "w")], timeout=120)
  assert out.returncode == 2 and "--steps must be >= 2 * --log_every" in out.stderr
  assert not (tmp_path / "w").exists()
