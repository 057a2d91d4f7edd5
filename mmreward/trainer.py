"""The training loop every trainer of the suite runs on: one :class:`Trainer` owns the run folder.

A method subclasses it and writes what is its own — setting up its models, one unit of work
(:meth:`Trainer.train_step`: an epoch or an optimiser step, returning a metrics row), what a checkpoint
holds besides the weights and what is exported at the end. The layer does the rest, the same way for
every method:

* the run folder: a fresh run refuses to overwrite a checkpoint unless ``overwrite`` (which deletes the old
  run's files first), ``resume`` needs one and refuses a config that changed in more than its budget
  (``config.json`` holds the run's config);
* ``metrics.jsonl``: one JSON row per unit (rows of units after the checkpoint, from a killed run, are
  dropped on resume), and the same rows to the trackers of ``Accelerator(log_with=...)``;
* checkpoints: safetensors only (:mod:`mmreward.checkpoint`: weights, optimiser, counters, RNG), written
  every ``checkpoint_every`` units, at the end, when the time budget runs out and on Ctrl-C (which
  finishes the current unit first; a second Ctrl-C aborts, keeping the last checkpoint);
* the final exports (:meth:`Trainer.finish`) whenever the run ends: last unit, time budget or Ctrl-C;
* the time budget (``max_minutes`` of this invocation: a resumed run gets the budget again), ``stop_after``
  (checkpoint and stop there, without exports: a simulated kill), a progress bar, and messages through
  accelerate's logger;
* several processes: they agree on stopping at a unit boundary, and only the main process writes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from .checkpoint import (
    RESUMABLE_KEYS,
    STATE_FILE,
    check_resumed_config,
    load_state,
    run_checkpoint_dir,
    save_state,
)
from .files import refuse_to_replace
from .stop import StopFlag


def trim_metrics(path: Path, keep) -> None:
    """Rewrite the JSONL log ``path`` with only the rows ``keep(row)`` accepts (a resumed run drops the rows
    a killed run wrote after its last checkpoint); written to a temp file and renamed."""
    if not path.is_file():
        return
    rows = [x for x in path.read_text().splitlines() if x.strip()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in rows if keep(json.loads(x))))
    os.replace(tmp, path)


def setup_logging(level: int = 20) -> None:
    """Show the suite's messages (the ``mmalign`` loggers) on stderr at ``level`` (INFO), once per process;
    other libraries' loggers are left as they are."""
    import logging

    logger = logging.getLogger("mmalign")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


class Trainer:
    """Subclass and implement :meth:`train_step`; override the other hooks as needed.

    Args:
        output_dir: the run folder.
        total: units (epochs or steps) of the full run.
        config: what ``config.json`` records (a dataclass config's ``vars``, a command line's arguments).
        resume: continue from ``output_dir/checkpoint``.
        checkpoint_every: units between checkpoints.
        max_minutes: wall-clock budget of this invocation (``None``: none).
        stop_after: checkpoint and stop after this many units.
        progress: show a progress bar (main process only).
        accelerator: the run's ``accelerate.Accelerator`` (one is made when not given).
        name: the run's name in the bar, the logs and the trackers.
        unit: ``"epoch"`` or ``"step"``: the key of each metrics row and the word in messages.
        where: the setting that named ``output_dir``, for messages (``--out`` on a command line).
        checkpoint_name: the checkpoint's subfolder of ``output_dir`` (``""``: the folder itself).
        metrics_file: the name of the metrics log in ``output_dir``.
        overwrite: replace a run already in ``output_dir`` (its files are deleted first).
        config_name: where in ``output_dir`` the config is recorded (when the folder is also a model folder
            with a ``config.json`` of its own, e.g. ``training/run_config.json``).
    """

    def __init__(self, output_dir: str | os.PathLike, total: int, config: dict | None = None, *, resume: bool = False,
                 checkpoint_every: int = 1, max_minutes: float | None = None, stop_after: int | None = None,
                 progress: bool = True, accelerator=None, name: str = "train", unit: str = "step",
                 where: str = "output_dir", checkpoint_name: str = "checkpoint", metrics_file: str = "metrics.jsonl",
                 overwrite: bool = False, config_name: str = "config.json") -> None:
        from accelerate import Accelerator
        from accelerate.logging import get_logger

        self.accelerator = accelerator if accelerator is not None else Accelerator(cpu=not torch.cuda.is_available())
        self.logger = get_logger(f"mmalign.{name}")
        self.out, self.total, self.run_config = Path(output_dir), int(total), config
        self.resume, self.checkpoint_every, self.max_minutes = resume, int(checkpoint_every), max_minutes
        self.stop_after, self.progress, self.name, self.unit = stop_after, progress, name, unit
        self.ckpt = run_checkpoint_dir(self.out, resume, name=checkpoint_name, where=where, overwrite=overwrite)
        self.metrics_file, self.config_name = metrics_file, config_name
        if resume and config is not None:
            check_resumed_config(self.out / config_name, config, RESUMABLE_KEYS | set(self.resumable_keys))
        if overwrite and not resume and self.is_main:
            self._remove_run()
        self.np_rng = None  # a numpy Generator whose state checkpoints carry (set by subclasses that draw from one)
        self.position = 0  # units done
        self.saved_position = 0  # units done at the last checkpoint
        self.elapsed = 0.0  # seconds of training before this process started (resumed runs)
        self.stopped_by: str | None = None

    resumable_keys: tuple[str, ...] = ()  # config keys besides the budget that may change on --resume
    run_files: tuple[str, ...] = ()  # files and folders of a run (besides checkpoint, metrics, config.json)

    # ------------------------------------------------------------------------------------ hooks
    def state(self) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
        """``(module, optimizer)`` whose state a checkpoint holds (the module's ``state_dict``)."""
        raise NotImplementedError

    def state_extra(self) -> dict:
        """JSON-able state besides weights and optimiser (counters, trackers), saved with each checkpoint."""
        return {}

    def load_state_extra(self, extra: dict) -> None:
        """Restore :meth:`state_extra` on resume."""

    def train_step(self, i: int) -> dict | None:
        """Unit ``i`` (0-based) of the run; returns its metrics row (without the unit key) or ``None``."""
        raise NotImplementedError

    def on_checkpoint(self, folder: Path) -> None:
        """Called on the main process after each checkpoint is written (exports beside it, e.g. LoRA files)."""

    def finish(self) -> dict:
        """Called on the main process when the run ends (``total`` units, time budget or Ctrl-C; not after
        ``stop_after``, a simulated kill): final exports; returns entries for the run's result."""
        return {}

    def checkpoint_due(self, position: int) -> bool:
        """Whether to checkpoint after ``position`` units (besides the end, the budget and Ctrl-C)."""
        return position % self.checkpoint_every == 0

    def row_position(self, row: dict) -> int:
        """The 0-based unit a metrics row was written by (rows at or after the resumed position are redone)."""
        return int(row[self.unit])

    def postfix(self, row: dict) -> dict:
        """What the progress bar shows of a row."""
        return {}

    # ------------------------------------------------------------------------------------ layer
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def seconds(self) -> float:
        """Training time so far, across resumes (before :meth:`run` starts: the time of earlier invocations)."""
        start = getattr(self, "_t_start", None)
        return self.elapsed if start is None else time.time() - start

    def _remove_run(self) -> None:
        """``--overwrite``: delete the earlier run's checkpoint, metrics, config and :attr:`run_files`."""
        import shutil

        ckpt = STATE_FILE if self.ckpt == self.out else self.ckpt.name  # (a checkpoint in the run folder itself)
        for name in (ckpt, self.metrics_file, self.config_name, *self.run_files):
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def checkpoint(self) -> None:
        """Write the checkpoint of the current position (all processes call it; the main one writes)."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            module, opt = self.state()
            extra = {**self.state_extra(), "elapsed": self.seconds}
            save_state(self.ckpt, module, opt, self.position, extra, self.np_rng)
            self.on_checkpoint(self.ckpt)
        self.saved_position, self._has_checkpoint = self.position, True

    def _restore(self) -> None:
        module, opt = self.state()
        self.position, extra = load_state(self.ckpt, module, opt, self.np_rng)
        self.elapsed = float(extra.get("elapsed", 0.0))
        self.load_state_extra(extra)

    def _open_metrics(self):
        path = self.out / self.metrics_file
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        if self.run_config is not None:
            (self.out / self.config_name).parent.mkdir(parents=True, exist_ok=True)
            (self.out / self.config_name).write_text(json.dumps(self.run_config, indent=2))
        if self.resume:
            trim_metrics(path, lambda row: self.row_position(row) < self.position)
        else:
            path.write_text("")
        return path.open("a")

    def log(self, row: dict) -> None:
        """Append a metrics row (main process) and send its numbers to the trackers."""
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
        if self.accelerator.trackers:
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != self.unit}
            self.accelerator.log({f"{self.name}/{k}": v for k, v in numbers.items()}, step=row.get(self.unit))

    def _stop_reason(self, flag: StopFlag) -> str | None:
        over = self.max_minutes is not None and time.time() - self._t_invoked > self.max_minutes * 60
        votes = torch.tensor([[flag.requested, over]], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:  # every process must agree, at a unit boundary
            votes = self.accelerator.gather(votes)
        votes = votes.cpu()
        if votes[:, 0].any():
            return "interrupt"
        if votes[:, 1].any():
            return "time budget"
        return None

    def run(self) -> dict:
        """Train to ``total`` units (or the budget, Ctrl-C, ``stop_after``); returns the run's result."""
        from tqdm import tqdm

        if self.resume:
            self._restore()
            self.logger.info(f"resumed from {self.ckpt} at {self.unit} {self.position}", main_process_only=True)
        # the position of the last checkpoint, and whether there is one: known on every process (no file check)
        self.saved_position, self._has_checkpoint = self.position, self.resume
        self._t_invoked = time.time()
        self._t_start = self._t_invoked - self.elapsed
        self._metrics = self._open_metrics()
        if self.accelerator.log_with:  # trackers (Accelerator(log_with=...)): the config's scalars as hyperparameters
            hparams = {k: v for k, v in (self.run_config or {}).items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers(self.name.replace(" ", "_"), config=hparams)
        # a time budget usually ends the run before `total`: then the bar just counts
        bar = tqdm(total=None if self.max_minutes else self.total, initial=self.position, desc=self.name,
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        result: dict = {}
        try:
            with StopFlag(self.unit) as flag:
                while self.position < self.total:
                    self.stopped_by = self._stop_reason(flag)
                    if self.stopped_by:
                        break
                    row = self.train_step(self.position)
                    if row is not None:
                        self.log({self.unit: self.position, **row})
                    self.position += 1
                    bar.update(1)
                    if row is not None and (post := self.postfix(row)):
                        bar.set_postfix(post)
                    stop = self.stop_after is not None and self.position >= self.stop_after
                    if self.checkpoint_due(self.position) or self.position == self.total or stop:
                        self.checkpoint()
                    if stop:
                        self.stopped_by = f"stop_after_{self.unit}s"
                        break
                if self.saved_position != self.position or not self._has_checkpoint:  # (also: stopped before a first unit)
                    self.checkpoint()
                ended = self.position >= self.total or self.stopped_by in ("interrupt", "time budget")
                if self.is_main and ended:
                    result = self.finish()
        finally:
            bar.close()
            if self._metrics is not None:
                self._metrics.close()
        if self.stopped_by in ("interrupt", "time budget"):
            self.logger.warning(f"{self.name}: stopped ({self.stopped_by}) at {self.unit} {self.position}; "
                                f"`--resume` continues from {self.ckpt}", main_process_only=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return {self.unit: self.position, "stopped_by": self.stopped_by, "output_dir": str(self.out), **result}


class StepTrainer(Trainer):
    """A trainer from functions, for the scripts that train the embedded models: ``step(i) -> row | None``
    is one optimiser step, ``modules`` / ``opt`` (and ``np_rng``) are what checkpoints hold, ``extra_state``
    / ``load_extra`` any JSON-able state besides. Their layout: the work folder holds the checkpoint and
    ``log.jsonl`` (rows keyed by the step count after the step) and ``config.json`` (``config``: the command
    line's arguments); ``resume`` continues it, ``overwrite`` starts it again."""

    resumable_keys = ("out", "fp16")  # the exported model may go elsewhere, in another precision

    def __init__(self, work: str | os.PathLike, total: int, modules: torch.nn.Module, opt: torch.optim.Optimizer, step,
                 *, np_rng=None, extra_state=None, load_extra=None, checkpoint_every: int = 200,
                 stop_after: int | None = None, name: str = "train", progress: bool = True, resume: bool = False,
                 overwrite: bool = False, config: dict | None = None) -> None:
        super().__init__(work, total, config, resume=resume, overwrite=overwrite, checkpoint_every=checkpoint_every,
                         stop_after=stop_after, progress=progress, name=name, unit="step", where="--work",
                         checkpoint_name="", metrics_file="log.jsonl")
        self.modules, self.opt, self._step, self.np_rng = modules, opt, step, np_rng
        self._extra_state, self._load_extra = extra_state, load_extra

    def state(self):
        return self.modules, self.opt

    def state_extra(self) -> dict:
        return self._extra_state() if self._extra_state else {}

    def load_state_extra(self, extra: dict) -> None:
        if self._load_extra:
            self._load_extra(extra)

    def row_position(self, row: dict) -> int:
        return int(row["step"]) - 1

    def train_step(self, i: int) -> dict | None:
        row = self._step(i)
        if row is not None:
            row["time"] = self.seconds
        return row


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--overwrite`` of the scripts that train an embedded model into ``--work`` / ``--out``."""
    p.add_argument("--resume", action="store_true", help="continue the run in --work from its checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start again although --work holds a run, and replace the model in --out")


def start_run(args: argparse.Namespace, seed: bool = True) -> None:
    """What an asset script does before it trains: refuse a filled ``--out`` (unless ``--overwrite``), run on
    ``--threads`` torch threads, log to the console and, with ``seed``, seed torch with ``--seed``."""
    if getattr(args, "out", None):
        check_out(args.out, args.overwrite)
    torch.set_num_threads(args.threads)
    setup_logging()
    if seed:
        torch.manual_seed(args.seed)


def check_out(out, overwrite: bool) -> None:
    """Refuse an ``--out`` that already holds files unless ``--overwrite``, before any training."""
    from .config_file import ConfigError

    out = Path(out)
    refuse_to_replace(out, ["*"] if out.is_dir() and any(out.iterdir()) else [], "a model", overwrite, ConfigError)

