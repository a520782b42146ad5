"""The one training loop: schedule, checkpoints, signals, NaN stop, metrics, progress.

Every trainer of the project (the AR-CSM / MLE image and 2-D models of `train.py`, the
VAEs of `vae/train.py`, the experiments through them) runs its steps through `run`. A
trainer says only what is its own, as a `Trainer`:

  init()                      the fresh state (a pytree with integer fields .step and
                              .bad_step: -1 while every loss so far was finite)
  abstract()                  the state's shapes, dtypes and shardings (for restoring
                              without initializing); None: init() is used
  compile(state, length, inputs) -> fn   a compiled call fn(state, inputs) ->
                              (state, metrics) that runs `length` train steps
  inputs(step, length)        the host-side inputs of steps [step, step + length): a pure
                              function of the step, so a resumed run sees what the
                              original saw
  evaluate(state) -> dict     evaluation (None: none)
  sample_grid(state)          an image of a few samples, written at each evaluation after
                              step 0 to WORKDIR/samples/train_<step>.png (None: none)

and `run` does the rest, the same way for all: resume from the newest readable
checkpoint, dispatch up to `steps_per_dispatch` steps per call (cut at every logging,
evaluation and checkpoint step: `pipeline.chunk_length`), check the recorded bad step at
every such step and stop with FloatingPointError naming it, log loss with steps/s and
ETA, write metrics.jsonl / TensorBoard, checkpoint every training.checkpoint_every steps,
at the first logged step, every training.checkpoint_every_secs and at the end, and on
SIGINT / SIGTERM save the current step and raise `Interrupted` (multi-host: through
JAX's preemption sync point, so every process stops at the same step).
"""

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax

from csm_jax import checkpoints
from csm_jax import metrics as metrics_lib
from csm_jax import pipeline as pipeline_lib
from csm_jax import sharding as sharding_lib


class Interrupted(Exception):
  """Training stopped by SIGINT, SIGTERM or SIGHUP, after saving a checkpoint of `step`."""

  def __init__(self, step: int, signum: int, directory: str):
    self.step, self.signum = step, signum
    name = signal.Signals(signum).name
    super().__init__(f"{name} received: stopped at step {step} with a checkpoint of it in "
                     f"{directory}; run the same command again to resume from there")


@contextlib.contextmanager
def catch_stop_signals(enabled: bool):
  """Yields a list that SIGINT / SIGTERM / SIGHUP append their number to (instead of
  killing)."""
  received = []
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield received
    return
  handler = lambda signum, frame: received.append(signum)
  # SIGHUP: the terminal closed or the ssh connection dropped; saved like SIGTERM
  old = {sig: signal.signal(sig, handler)
         for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
  try:
    yield received
  finally:
    for sig, h in old.items():
      signal.signal(sig, h)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What one kind of model brings to the loop (see the module docstring)."""
  init: Callable[[], Any]
  compile: Callable[[Any, int, Any], Callable]
  inputs: Callable[[int, int], Any]
  abstract: Optional[Callable[[], Any]] = None
  evaluate: Optional[Callable[[Any], dict]] = None
  sample_grid: Optional[Callable[[Any], Any]] = None  # state -> (H, W, C) in [0, 1]
  describe: Callable[[Any], str] = lambda state: ""   # the opening log line
  format_row: Callable[[dict], str] = lambda row: f"loss {row['loss']:.4f}"
  nan_hint: str = "Lower optim.learning_rate or check the data."
  steps_per_dispatch: int = 1
  fields: Optional[dict] = None   # checkpoints.model_fields(config): named on a mismatch


def abstract_replicated(init: Callable[[], Any], mesh):
  """init()'s shapes and dtypes, replicated on `mesh`, with nothing computed."""
  repl = sharding_lib.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                      jax.eval_shape(init))


def _restore_or_init(trainer: Trainer, ckpt):
  if ckpt is not None and ckpt.latest_step() is not None:  # resume: no initialization
    like = trainer.abstract() if trainer.abstract is not None else trainer.init()
    return ckpt.restore_latest(like)
  return trainer.init()


def run(trainer: Trainer, training, workdir: Optional[str] = None,
        eval_every: Optional[int] = None, log: Callable[[str], None] = logging.info,
        label: str = "", callbacks: Sequence[Callable] = (),
        on_start: Optional[Callable[[], None]] = None):
  """Trains to training.num_steps (`training`: the config's training section).

  Returns (state, info); info: compile_seconds, train_seconds (evaluation and
  compilation excluded), steps, steps_run (by this call), step_seconds (per step run;
  None if none ran), final (the last logged row), final_loss, history (one
  {step, seconds, **evaluation} per evaluation).
  `eval_every` defaults to training.eval_every (0: never); evaluation runs at step 0 of
  a fresh run, every `eval_every` steps and at the end. `callbacks`: cb(step, state,
  row) after each logged step. `on_start()` runs once the state is restored (or
  initialized), before the first step: trainers write their config record there, so a
  run refused by its checkpoints never rewrites it.
  """
  t, n = training, int(training.num_steps)
  eval_every = t.eval_every if eval_every is None else eval_every
  if eval_every < 0:
    raise ValueError(f"eval_every must be >= 0 (0: never), got {eval_every}")
  evaluate_fn = trainer.evaluate if eval_every else None
  prefix = f"[{label}] " if label else ""
  ckpt = writer = None
  if workdir is not None:
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints,
                                    fields=trainer.fields)
  state = _restore_or_init(trainer, ckpt)
  if on_start is not None:
    on_start()
  start = int(state.step)
  if start >= n:
    log(f"{prefix}already at step {start} of {n}; nothing to do")
  elif start:
    log(f"{prefix}resumed from checkpoint at step {start}")
  if workdir is not None:
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
  line = trainer.describe(state)
  if line:
    log(prefix + line)

  k = int(trainer.steps_per_dispatch)
  intervals = (t.log_every, t.checkpoint_every, eval_every if evaluate_fn is not None else 0)
  chunk = lambda step: pipeline_lib.chunk_length(step, k, intervals, n)
  compiled = {}  # dispatch length -> compiled call

  def step_fn(length, inputs):
    if length not in compiled:
      compiled[length] = trainer.compile(state, length, inputs)
    return compiled[length]

  t0 = time.perf_counter()
  inputs = None
  if start < n:
    inputs = trainer.inputs(start, chunk(start))
    step_fn(chunk(start), inputs)
  info = {"compile_seconds": time.perf_counter() - t0, "train_seconds": 0.0, "steps": n,
          "steps_run": 0, "step_seconds": None, "final": {}, "final_loss": float("nan"),
          "history": []}

  def evaluate(step):
    row = evaluate_fn(state)
    info["history"].append({"step": step, "seconds": info["train_seconds"], **row})
    if writer is not None:
      writer.write(step, row)
    log(f"{prefix}step {step} eval " + json.dumps(row))
    if trainer.sample_grid is not None and writer is not None and step > 0:
      t0 = time.perf_counter()
      path = writer.write_image(step, "train", trainer.sample_grid(state))
      if path:
        log(f"{prefix}step {step} samples -> {path} ({time.perf_counter() - t0:.1f}s)")

  if evaluate_fn is not None and start == 0:
    evaluate(0)
  progress = metrics_lib.Progress(start, n)
  tick = last_save = time.perf_counter()
  multi = jax.process_count() > 1  # JAX's preemption service takes SIGTERM there
  with catch_stop_signals(ckpt is not None and not multi) as stop:
    step = start
    while step < n:
      length = chunk(step)
      state, metrics = step_fn(length, inputs)(state, inputs)
      done = step = step + length
      info["steps_run"] += length
      if ckpt is not None and multi and sharding_lib.preemption_point(done - length, done):
        stop.append(signal.SIGTERM)
      if stop:  # SIGINT / SIGTERM: keep this step, then stop
        ckpt.save(done, state)
        ckpt.close()
        writer.close()
        raise Interrupted(done, stop[0], ckpt.directory)
      if done < n:  # host work overlaps the asynchronous device step
        inputs = trainer.inputs(done, chunk(done))
      is_log = done % t.log_every == 0 or done == n
      is_eval = evaluate_fn is not None and (done % eval_every == 0 or done == n)
      is_ckpt = ckpt is not None and (
          done % t.checkpoint_every == 0 or done == n
          or (is_log and ckpt.latest_step() is None)            # a first checkpoint early
          or (t.checkpoint_every_secs
              and time.perf_counter() - last_save >= t.checkpoint_every_secs))
      if is_log or is_eval or is_ckpt:
        _check_finite(state, ckpt, prefix, trainer.nan_hint)
      if is_log:
        row = {key: float(v) for key, v in metrics.items()}
        row.update(progress.update(done))
        info["final"], info["final_loss"] = row, row["loss"]
        if writer is not None:
          writer.write(done, row)
        log(f"{prefix}step {done}/{n} {trainer.format_row(row)}  "
            f"{row['steps_per_sec']:.2f} steps/s  ETA {progress.eta_str(done)}")
        for cb in callbacks:
          cb(done, state, row)
      if is_eval:
        jax.block_until_ready(state)
        info["train_seconds"] += time.perf_counter() - tick
        evaluate(done)
        tick = time.perf_counter()
      if is_ckpt:
        ckpt.save(done, state)
        last_save = time.perf_counter()
  jax.block_until_ready(state)
  info["train_seconds"] += time.perf_counter() - tick
  if info["steps_run"]:
    info["step_seconds"] = info["train_seconds"] / info["steps_run"]
  if ckpt is not None:
    ckpt.close()
  if writer is not None:
    writer.close()
  return state, info


def _check_finite(state, ckpt, prefix, hint):
  """FloatingPointError naming the first step whose loss or gradient was not finite."""
  bad = int(state.bad_step)
  if bad < 0:
    return
  last = None if ckpt is None else ckpt.latest_step()
  where = ("no checkpoint written" if last is None else
           f"the last good checkpoint (step {last}) left in {ckpt.directory}")
  raise FloatingPointError(
      f"{prefix}non-finite loss or gradient at step {bad} (0-based); training stopped "
      f"with the state of step {bad} kept in memory and {where}. {hint}")
