"""The trainer layer on a toy method: resume after a kill gives the uninterrupted weights and metrics
(rows the killed run wrote after its checkpoint are dropped), a fresh run never overwrites a checkpoint,
``--resume`` needs one and refuses a changed config except its budget, ``--overwrite`` replaces a run, the
time budget (per invocation) and ``stop_after`` stop at a unit boundary with a checkpoint, and the final export
happens whenever the run ends (last unit, budget, Ctrl-C), not after a simulated kill."""

import json
import time

import pytest
import torch

from mmreward.checkpoint import read_state_info
from mmreward.config_file import ConfigError
from mmreward.trainer import StepTrainer, Trainer


class Toy(Trainer):
    """Least squares on a fresh batch per step (a function of the step), SGD with momentum."""

    def __init__(self, out, total=6, config=None, sleep=0.0, **kw):
        super().__init__(out, total, config or {"toy": True}, checkpoint_every=2, progress=False, name="toy", **kw)
        self.sleep = sleep
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.seen = 0
        self.finished = False

    def state(self):
        return self.model, self.opt

    def state_extra(self):
        return {"seen": self.seen}

    def load_state_extra(self, extra):
        self.seen = extra["seen"]

    def train_step(self, i):
        time.sleep(self.sleep)
        g = torch.Generator().manual_seed(i)
        x = torch.randn(8, 3, generator=g)
        loss = ((self.model(x)[:, 0] - x.sum(1)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.seen += 8
        return {"loss": loss.item(), "seen": self.seen}

    def finish(self):
        self.finished = True
        return {"exported": True}


def rows(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    full = Toy(tmp_path / "full")
    res = full.run()
    assert res == {"step": 6, "stopped_by": None, "output_dir": str(tmp_path / "full"), "exported": True}
    assert [r["step"] for r in rows(tmp_path / "full")] == list(range(6))
    assert json.loads((tmp_path / "full" / "config.json").read_text()) == {"toy": True}

    part = Toy(tmp_path / "part", stop_after=3)
    res = part.run()
    assert res["step"] == 3 and res["stopped_by"] == "stop_after_steps" and not part.finished
    assert read_state_info(tmp_path / "part" / "checkpoint")[0] == 3
    # the killed run went on past its checkpoint and logged two more steps
    with (tmp_path / "part" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "loss": -1.0, "seen": -1}) + "\n" + json.dumps({"step": 4, "loss": -1.0}) + "\n")
    with pytest.raises(ConfigError, match="already holds a checkpoint: pass --resume to continue it, --overwrite"):
        Toy(tmp_path / "part")  # a fresh run would overwrite it
    resumed = Toy(tmp_path / "part", resume=True)
    assert resumed.run()["step"] == 6 and resumed.finished and resumed.seen == 48
    assert rows(tmp_path / "part") == rows(tmp_path / "full")  # every step once, the killed run's extras gone
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)


def test_resume_needs_a_checkpoint_and_the_budget_stops_with_one(tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint in"):
        Toy(tmp_path / "none", resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, expected a directory"):
        Toy(tmp_path / "file")
    toy = Toy(tmp_path / "budget", total=1000, max_minutes=1e-9)  # over budget before the first step
    res = toy.run()
    assert res["stopped_by"] == "time budget" and res["step"] == 0 and toy.finished  # the exports are written
    assert read_state_info(tmp_path / "budget" / "checkpoint")[0] == 0


def test_the_budget_is_per_invocation_so_a_resumed_run_goes_on(tmp_path):
    first = Toy(tmp_path / "run", total=1000, max_minutes=0.15 / 60, sleep=0.05)
    done = first.run()["step"]
    assert 1 <= done < 1000 and first.finished
    # resuming with the same budget trains another budget's worth (before, the elapsed time of the first
    # invocation counted, and the resumed run stopped at once)
    again = Toy(tmp_path / "run", total=1000, max_minutes=0.15 / 60, sleep=0.05, resume=True)
    assert again.run()["step"] > done
    assert [r["step"] for r in rows(tmp_path / "run")] == list(range(again.position))


def test_resume_refuses_a_changed_config_but_accepts_a_raised_budget(tmp_path):
    cfg = {"lora_rank": 4, "learning_rate": 1e-3, "num_epochs": 4, "max_minutes": 10.0}
    Toy(tmp_path / "run", total=4, config=cfg, stop_after=2).run()
    with pytest.raises(ConfigError, match=r"--resume with a changed config \(lora_rank: 4 in the run, 8 now\)"):
        Toy(tmp_path / "run", total=4, config={**cfg, "lora_rank": 8}, resume=True)
    with pytest.raises(ConfigError, match="learning_rate"):
        Toy(tmp_path / "run", total=4, config={**cfg, "learning_rate": 1.0}, resume=True)
    raised = Toy(tmp_path / "run", total=6, config={**cfg, "num_epochs": 6, "max_minutes": 30.0}, resume=True)
    assert raised.run()["step"] == 6
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_epochs"] == 6


def test_overwrite_replaces_the_run_and_excludes_resume(tmp_path):
    Toy(tmp_path / "run", stop_after=4).run()
    (tmp_path / "run" / "stale.txt").write_text("not a run file")
    with pytest.raises(ConfigError, match="exclude each other"):
        Toy(tmp_path / "run", resume=True, overwrite=True)
    toy = Toy(tmp_path / "run", total=2, overwrite=True)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert toy.run()["step"] == 2 and [r["step"] for r in rows(tmp_path / "run")] == [0, 1]
    assert (tmp_path / "run" / "stale.txt").is_file()  # files that are not the run's are left alone


def test_step_trainer_keeps_the_work_folder_layout_and_resumes_when_told(tmp_path):
    def make(stop_after=None, **kw):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(i):
            x = torch.randn(4, 2, generator=torch.Generator().manual_seed(i))
            loss = (model(x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"step": i + 1, "loss": loss.item()}

        return model, StepTrainer(tmp_path / "work", 5, model, opt, step, checkpoint_every=2, stop_after=stop_after,
                                  progress=False, **kw)

    model, trainer = make(stop_after=3)
    trainer.run()
    assert (tmp_path / "work" / "state.safetensors").is_file() and trainer.position == 3
    with pytest.raises(ConfigError, match="pass --resume to continue it, --overwrite to replace it, or choose another --work"):
        make()  # a rerun never starts again silently
    model, trainer = make(resume=True)
    trainer.run()
    log = [json.loads(x) for x in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and all(r["time"] >= 0 for r in log)
    torch.manual_seed(0)
    ref = torch.nn.Linear(2, 1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i in range(5):
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(i))
        ref_opt.zero_grad()
        (ref(x) ** 2).mean().backward()
        ref_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_metrics_rows_reach_the_accelerate_trackers(tmp_path):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True

        def __init__(self):
            super().__init__()
            self.rows, self.config = [], None

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

    rec = Recorder()
    toy = Toy(tmp_path / "run", total=3, accelerator=Accelerator(cpu=True, log_with=[rec]))
    toy.run()
    assert rec.config == {"toy": True}
    assert [s for s, _ in rec.rows] == [0, 1, 2] and set(rec.rows[0][1]) == {"toy/loss", "toy/seen"}
    assert [v["toy/loss"] for _, v in rec.rows] == [r["loss"] for r in rows(tmp_path / "run")]


def test_an_uninstalled_tracker_is_a_config_error(tmp_path):
    import importlib.util

    from diffusion_align.config import D3POConfig
    from diffusion_align.d3po import D3POTrainer

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ConfigError, match="log_with: 'tensorboard' is not installed"):
        D3POTrainer(D3POConfig(output_dir=str(tmp_path / "run"), log_with="tensorboard"))


def test_step_trainer_records_its_arguments_and_refuses_a_changed_one_on_resume(tmp_path):
    def make(**kw):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return StepTrainer(tmp_path / "work", 4, model, opt, lambda i: {"step": i + 1}, checkpoint_every=1,
                           progress=False, **kw)

    make(stop_after=2, config={"width": 8, "steps": 4, "out": "a"}).run()
    assert json.loads((tmp_path / "work" / "config.json").read_text())["width"] == 8
    with pytest.raises(ConfigError, match="width: 8 in the run, 16 now"):
        make(resume=True, config={"width": 16, "steps": 4, "out": "a"})
    assert make(resume=True, config={"width": 8, "steps": 6, "out": "b"}).run()["step"] == 4  # budget and --out may change
