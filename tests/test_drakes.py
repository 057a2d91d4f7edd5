"""DRAKES and its DNA world: the generator's exact likelihood, the hidden properties, the masked diffusion
model, the Gumbel-softmax sampler (forward values = hard sampling; gradients through exactly K steps), the
KL against an independent computation, the oracle loaders, and the trainer (reward goes up, resume gives
the uninterrupted weights, config errors). Tiny models are saved and loaded through the real loaders."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from diffusion_align.dna.mdlm import (
    Denoiser,
    DenoiserConfig,
    diffusion_loss,
    load_model,
    one_hot_state,
    sample,
    save_model,
    step_probs,
    x0_log_probs,
)
from diffusion_align.dna.oracle import OracleConfig, SeqCNN, load_oracle, save_oracle
from diffusion_align.dna.world import DNAWorld, decode, encode, kmer_correlation, read_sequences, write_fasta
from diffusion_align.drakes import DrakesConfig, relaxed_trajectory, step_kl, train
from mmreward.config_file import ConfigError
from mmreward.errors import ModelLoadError, UserError

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(length=12, seed=0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(DenoiserConfig(length=length, channels=16, dilations=[1, 2])).eval()


# ------------------------------------------------------------------------------------ the world
def test_exact_likelihood_is_a_distribution_and_matches_the_sampler():
    w4 = DNAWorld(length=4)
    every = torch.tensor(list(itertools.product(range(4), repeat=4)))
    assert w4.log_likelihood(every).exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # empirical frequencies of the sampler against exp(log-likelihood), motifs made common so they matter
    w3 = DNAWorld(length=3)
    w3.rates = w3.rates * 30
    x = w3.sample(100_000, np.random.default_rng(0))
    emp = torch.bincount(x[:, 0] * 16 + x[:, 1] * 4 + x[:, 2], minlength=64).double() / len(x)
    p = w3.log_likelihood(torch.tensor(list(itertools.product(range(4), repeat=3)))).exp()
    assert (emp - p).abs().max().item() < 5 * (p.max().item() / len(x)) ** 0.5


def test_hidden_properties():
    w = DNAWorld()
    rng = np.random.default_rng(0)
    x = w.sample(2000, rng)
    assert w.activity(x).mean().abs().item() < 0.5  # natural sequences: few motifs
    base = torch.full((1, 200), 0)  # poly-A: no motif, GC 0
    base[0, ::2] = 3  # ATAT...: no homopolymer run, no hit
    assert w.activity(base).item() == 0.0
    sp1 = encode(["GGGGCGGGGC"])[0]
    planted = base.clone()
    planted[0, 95:105] = sp1  # centre 100: counts double
    assert w.activity(planted).item() == pytest.approx(2.0)
    planted[0, 2:12] = sp1  # off-centre: counts once
    assert w.activity(planted).item() == pytest.approx(3.0)
    foxa = encode(["TGTTTACTTA"])[0]
    planted[0, 120:130] = foxa  # centre 125, SP1 at 100: within 40 bp -> cooperativity bonus
    assert w.activity(planted).item() == pytest.approx(3.0 + 2 * 0.6 + 0.8)
    # accessibility: FOXA and natural composition; stuffing GC-rich SP1 closes the chromatin
    gc_mid = torch.tensor([[0, 1, 3, 2] * 50])
    gc_mid[0, 120:130] = foxa
    assert w.accessible(gc_mid).item()
    stuffed = torch.tensor([[2, 1] * 100])
    stuffed[0, 120:130] = foxa
    for k in range(0, 110, 11):
        stuffed[0, k : k + 10] = sp1
    assert w.activity(stuffed).item() > 10 and not w.accessible(stuffed).item()


def test_sequence_io(tmp_path):
    x = DNAWorld().sample(5, np.random.default_rng(0))
    write_fasta(tmp_path / "s.fa", x)
    assert torch.equal(encode(read_sequences(tmp_path / "s.fa")), x)
    (tmp_path / "s.csv").write_text("sequence,label\n" + "".join(f"{s},1.0\n" for s in decode(x)))
    assert torch.equal(encode(read_sequences(tmp_path / "s.csv")), x)
    with pytest.raises(ValueError, match="outside ACGT"):
        encode(["ACGN"])
    with pytest.raises(ValueError, match="one length"):
        encode(["ACG", "AC"])
    assert kmer_correlation(x, x) == pytest.approx(1.0)


# --------------------------------------------------------------------------------- the model
def test_model_save_load_and_sampler(tmp_path):
    m = tiny_model()
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    s = one_hot_state(torch.randint(0, 5, (3, 12)))
    assert torch.equal(m(s), m2(s))
    x = sample(m2, 5, steps=6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 12) and x.max() <= 3
    # subs: unmasked positions are copied
    logp = x0_log_probs(m, s)
    keep = s.argmax(-1) != 4
    assert torch.equal(logp[keep].argmax(-1), s[keep][:, :4].argmax(-1))
    with pytest.raises(ModelLoadError, match="not a DNA diffusion model folder"):
        load_model(tmp_path)


@pytest.mark.slow
def test_pretrained_model_prefers_natural_over_shuffled_sequences():
    """The embedded model, trained on the known generator, gives natural sequences a better ELBO than the
    same sequences with their bases shuffled (same composition, broken order and motifs)."""
    model = load_model(ROOT / "assets" / "dna-mdlm")
    w = DNAWorld()
    x = w.sample(128, np.random.default_rng(123))
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([row[torch.randperm(len(row), generator=g)] for row in x])
    with torch.no_grad():
        nat = np.mean([diffusion_loss(model, x, torch.Generator().manual_seed(k)).item() for k in range(4)])
        shuf = np.mean([diffusion_loss(model, shuffled, torch.Generator().manual_seed(k)).item() for k in range(4)])
    assert nat < shuf - 0.05, (nat, shuf)
    # and the true generator agrees on which is natural
    assert (w.log_likelihood(x) > w.log_likelihood(shuffled)).float().mean() > 0.9


# ------------------------------------------------------------------------- the relaxed sampler
def test_relaxed_sampler_forward_values_equal_hard_sampling():
    m = tiny_model()
    hard = sample(m, 6, steps=8, generator=torch.Generator().manual_seed(3))
    x0, _, _ = relaxed_trajectory(m, None, 6, 8, truncate=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x0[..., :4].argmax(-1), hard)
    assert torch.equal(x0, torch.nn.functional.one_hot(hard, 5).float())  # exactly one-hot values


class StepProbe(nn.Module):
    """The denoiser with a zero bias per call (= per sampling step): the bias's gradient shows which steps
    the reward's gradient reaches."""

    def __init__(self, inner: Denoiser, steps: int):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.bias = nn.Parameter(torch.zeros(steps, 5))
        self.calls = 0

    def forward(self, x):
        out = self.inner(x) + self.bias[self.calls]
        self.calls += 1
        return out


@pytest.mark.parametrize("hard_states", [True, False])
def test_gradients_reach_the_model_through_the_last_k_steps_only(hard_states):
    steps, k = 8, 3
    probe = StepProbe(tiny_model(), steps)
    x0, _, _ = relaxed_trajectory(probe, None, 4, steps, truncate=k, hard_states=hard_states,
                                  generator=torch.Generator().manual_seed(0))
    (x0[..., 2].sum() + 0.3 * x0[..., 1].sum()).backward()  # a reward: count of G (and some C)
    reached = probe.bias.grad.abs().sum(-1) > 0
    assert reached.tolist() == [False] * (steps - k) + [True] * k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in probe.inner.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("samples", [None, 3])
def test_early_kl_reaches_the_early_steps_it_samples(samples):
    """With the KL, each early step's term is backpropagated as it is computed: all early steps, or
    ``early_kl_samples`` of them weighted by (early steps)/samples, whose weighted sum is the logged KL."""
    steps, k = 10, 2
    probe = StepProbe(tiny_model(), steps)
    terms = []

    def backprop(kl):
        terms.append(kl.detach())
        kl.sum().backward()

    _, kl_late, kl_early = relaxed_trajectory(probe, tiny_model(seed=1), 4, steps, truncate=k, early_kl=backprop,
                                              early_kl_samples=samples, generator=torch.Generator().manual_seed(0))
    kl_late.sum().backward()
    reached = (probe.bias.grad.abs().sum(-1) > 0).tolist()
    assert sum(reached[: steps - k]) == (samples or steps - k) and all(reached[steps - k :])
    assert len(terms) == (samples or steps - k)
    assert torch.allclose(torch.stack(terms).sum(0), kl_early)
    if samples:  # unbiased: over many trajectories, the sampled estimate's mean is the full early KL's
        m, ref = tiny_model(), tiny_model(seed=1)
        with torch.no_grad():
            est = [relaxed_trajectory(m, ref, 4, steps, k, early_kl_samples=samples,
                                      generator=torch.Generator().manual_seed(r))[2].mean() for r in range(300)]
            full = [relaxed_trajectory(m, ref, 4, steps, k, generator=torch.Generator().manual_seed(10**4 + r))[2].mean()
                    for r in range(300)]
        est, full = torch.stack(est), torch.stack(full)
        se = (est.var() / len(est) + full.var() / len(full)).sqrt()
        assert (est.mean() - full.mean()).abs() < 3 * se, (est.mean(), full.mean(), se)
        assert est.std() > full.std()  # the price: more variance per trajectory


def test_step_kl_against_an_independent_computation():
    m, ref = tiny_model(seed=0), tiny_model(seed=1)
    tokens = torch.randint(0, 4, (3, 12))
    tokens[torch.rand(3, 12) < 0.6] = 4
    state = one_hot_state(tokens)
    t, s = 0.7, 0.55
    lp, lp_ref = x0_log_probs(m, state), x0_log_probs(ref, state)
    ours = step_kl(lp, lp_ref, state, t, s)
    q, q_ref = step_probs(lp, t, s), step_probs(lp_ref, t, s)  # transition of a masked position, [B, L, 5]
    per_pos = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=q),
                                                torch.distributions.Categorical(probs=q_ref))
    expected = (per_pos * (tokens == 4)).sum(-1)  # unmasked positions stay put under both models
    assert torch.allclose(ours, expected, atol=1e-5)
    assert (ours > 0).all()  # non-zero at hard states (the reference's term is 0 there)
    assert torch.allclose(step_kl(lp, lp, state, t, s), torch.zeros(3))
    # a trajectory's KL against itself is zero; against another model positive, early and late
    x0, kl_late, kl_early = relaxed_trajectory(m, m, 3, 6, truncate=2, generator=torch.Generator().manual_seed(0))
    assert kl_late.abs().max() < 1e-6 and kl_early.abs().max() < 1e-6
    _, kl_late, kl_early = relaxed_trajectory(m, ref, 3, 6, truncate=2, generator=torch.Generator().manual_seed(0))
    assert (kl_late > 0).all() and (kl_early > 0).all()


# ---------------------------------------------------------------------------------- the oracles
class GCount(nn.Module):
    def forward(self, x):  # [B, L, 4] -> [B, 2]: fraction of G, fraction of T
        return torch.stack([x[..., 2].mean(-1), x[..., 3].mean(-1)], -1)


def test_oracle_loaders(tmp_path):
    torch.manual_seed(0)
    net = SeqCNN(OracleConfig(length=12, channels=8, dilations=[1]))
    save_oracle(net, tmp_path / "o")
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (5, 12)), 4).float()
    assert torch.allclose(load_oracle(tmp_path / "o")(x), net(x)[:, 0])
    torch.jit.script(GCount()).save(str(tmp_path / "g.pt"))
    r = load_oracle(tmp_path / "g.pt", column=1)
    assert torch.allclose(r(x), x[..., 3].mean(-1))
    ep = torch.export.export(GCount(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(tmp_path / "g.pt2"))
    assert torch.allclose(load_oracle(tmp_path / "g.pt2")(x[:3]), x[:3, :, 2].mean(-1))
    chf = load_oracle(nn.Sequential(nn.Flatten(), nn.Linear(48, 1)), channels_first=True)
    assert chf(x).shape == (5,)
    with pytest.raises(ModelLoadError, match="oracle not found"):
        load_oracle(tmp_path / "missing")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an exported oracle"):
        load_oracle(tmp_path / "junk.pt")


# ----------------------------------------------------------------------------------- the trainer
@pytest.fixture()
def drakes_setup(tmp_path):
    save_model(tiny_model(length=12), tmp_path / "model")
    torch.jit.script(GCount()).save(str(tmp_path / "gcount.pt"))
    return {"pretrained": str(tmp_path / "model"), "reward": str(tmp_path / "gcount.pt"), "eval_reward": None,
            "sample_steps": 6, "truncate_steps": 3, "batch_size": 8, "num_accum_steps": 1, "learning_rate": 3e-2,
            "checkpoint_every": 2}


@pytest.mark.slow
def test_drakes_raises_the_reward_and_kl_holds_it_back(drakes_setup, tmp_path):
    def run(name, alpha):
        cfg = DrakesConfig.from_dict({**drakes_setup, "output_dir": str(tmp_path / name), "alpha": alpha, "num_epochs": 25})
        train(cfg, progress=False)
        model = load_model(tmp_path / name / "model")
        x = sample(model, 256, steps=6, generator=torch.Generator().manual_seed(1))
        return (x == 2).float().mean().item()

    base = (sample(load_model(drakes_setup["pretrained"]), 256, steps=6, generator=torch.Generator().manual_seed(1)) == 2).float().mean().item()
    free, kl = run("nokl", 0.0), run("kl", 1.0)
    assert free > base + 0.3, (base, free)
    assert base < kl < free, (base, kl, free)


def test_drakes_resume_gives_the_uninterrupted_weights(drakes_setup, tmp_path):
    full = DrakesConfig.from_dict({**drakes_setup, "output_dir": str(tmp_path / "full"), "num_epochs": 4})
    train(full, progress=False)
    part = DrakesConfig.from_dict({**drakes_setup, "output_dir": str(tmp_path / "part"), "num_epochs": 4})
    assert train(part, stop_after_epochs=2, progress=False)["epoch"] == 2
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(part, progress=False)
    train(part, resume=True, progress=False)
    a, b = load_model(tmp_path / "full" / "model"), load_model(tmp_path / "part" / "model")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]


def test_drakes_config_errors_and_train_entry_point(drakes_setup, tmp_path):
    with pytest.raises(ConfigError, match="truncate_steps"):
        DrakesConfig.from_dict({**drakes_setup, "truncate_steps": 9})
    with pytest.raises(ConfigError, match="alpha"):
        DrakesConfig.from_dict({**drakes_setup, "alpha": -1})
    with pytest.raises(ConfigError, match="unknown config key"):
        DrakesConfig.from_dict({**drakes_setup, "lora_rank": 4})
    bad = DrakesConfig.from_dict({**drakes_setup, "reward": str(tmp_path / "nope"), "output_dir": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="oracle not found"):
        train(bad, progress=False)
    import yaml

    from diffusion_align.train import main

    cfg_file = tmp_path / "drakes.yaml"
    cfg_file.write_text(yaml.safe_dump({"method": "drakes", **drakes_setup, "output_dir": str(tmp_path / "cli"), "num_epochs": 2}))
    info = main(["--config", str(cfg_file), "--no-progress"])
    assert info["epoch"] == 2 and (tmp_path / "cli" / "model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- real-data paths
def test_pretrain_and_oracle_on_user_files(tmp_path):
    """A user's FASTA pretrains the model (the length comes from the data; a stopped run resumes to the
    uninterrupted weights) and a user's CSV trains an oracle that DRAKES loads."""
    from diffusion_align.dna import pretrain
    from diffusion_align.dna.oracle import main as oracle_main

    rng = np.random.default_rng(0)
    w = DNAWorld(length=24)
    x = w.sample(300, rng)
    write_fasta(tmp_path / "seqs.fa", x)
    common = ["--data", str(tmp_path / "seqs.fa"), "--batch", "8", "--channels", "8", "--eval-every", "3",
              "--checkpoint-every", "2"]
    full = pretrain.main(["--out", str(tmp_path / "full"), "--steps", "6", *common])
    assert full["steps"] == 6 and np.isfinite(full["val_elbo_nats_per_base"])
    model = load_model(tmp_path / "full")
    assert model.config.length == 24
    part = tmp_path / "part"
    assert pretrain.main(["--out", str(part), "--steps", "6", "--stop-after", "4", *common])["steps"] == 4  # cut short ...
    with pytest.raises(UserError, match="already holds a checkpoint"):
        pretrain.main(["--out", str(part), "--steps", "6", *common])
    pretrain.main(["--out", str(part), "--steps", "6", "--resume", *common])  # ... continued to 6
    for (k, v), u in zip(model.state_dict().items(), load_model(part).state_dict().values()):
        assert torch.allclose(v, u, atol=1e-6), k

    y = w.activity(x) + 0.1
    (tmp_path / "lab.csv").write_text("sequence,hepg2\n" + "".join(f"{s},{v:.4f}\n" for s, v in zip(decode(x), y.tolist())))
    args = ["--data", str(tmp_path / "lab.csv"), "--label-column", "hepg2", "--epochs", "2"]
    info = oracle_main(["--out", str(tmp_path / "oracle"), *args])
    assert len(info["history"]) == 2 and info["steps"] == 2 * 2  # 285 training sequences: 2 batches per epoch
    oracle = load_oracle(tmp_path / "oracle")
    assert oracle(torch.nn.functional.one_hot(x[:5], 4).float()).shape == (5,)
    meta = json.loads((tmp_path / "oracle" / "oracle.json").read_text())
    assert meta["data"].endswith("lab.csv") and meta["label_column"] == "hepg2"
    # stopped mid-epoch, then resumed: the uninterrupted run's weights
    assert oracle_main(["--out", str(tmp_path / "o_part"), "--stop-after", "3", *args])["steps"] == 3
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        oracle_main(["--out", str(tmp_path / "o_part"), *args])
    oracle_main(["--out", str(tmp_path / "o_part"), "--resume", *args])
    ref = load_oracle(tmp_path / "oracle").model.state_dict()
    for k, v in load_oracle(tmp_path / "o_part").model.state_dict().items():
        assert torch.allclose(v, ref[k], atol=1e-6), k
    with pytest.raises(ValueError, match="no label column 'k562'"):
        oracle_main(["--out", str(tmp_path / "o2"), "--data", str(tmp_path / "lab.csv"), "--label-column", "k562"])


@pytest.mark.slow
def test_embedded_oracles_track_the_hidden_activity():
    """The shipped oracles (trained on disjoint noisy libraries of the world) predict the hidden activity of
    fresh sequences, natural and motif-enriched, and are not fooled by a low-complexity sequence."""
    from diffusion_align.dna.oracle import world_library

    w = DNAWorld()
    x, _ = world_library(w, 1000, seed=4242, noise=0.0)
    truth = w.activity(x).float()
    onehot = torch.nn.functional.one_hot(x, 4).float()
    preds = []
    for name in ("dna-oracle-reward", "dna-oracle-eval"):
        with torch.no_grad():
            pred = load_oracle(ROOT / "assets" / name)(onehot)
        assert torch.corrcoef(torch.stack([pred, truth]))[0, 1] > 0.85, name
        preds.append(pred)
        poly_g = torch.nn.functional.one_hot(torch.full((1, 200), 2), 4).float()
        assert load_oracle(ROOT / "assets" / name)(poly_g).item() < 1.0  # true activity 0
    assert not torch.allclose(preds[0], preds[1], atol=1e-3)  # two different models


def test_vocabulary_and_length_come_from_the_data(tmp_path):
    """A data set over another alphabet (here 5 amino-acid letters, length 16): ``--alphabet auto`` gives the
    model and the oracle its vocabulary, and DRAKES fine-tunes the pair end to end."""
    from diffusion_align.dna import pretrain
    from diffusion_align.dna.oracle import main as oracle_main
    from diffusion_align.dna.world import data_alphabet

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEF"), 16)) for _ in range(200)]
    assert data_alphabet(seqs) == "ACDEF"
    with pytest.raises(ValueError, match="outside ACGT"):
        encode(seqs)
    (tmp_path / "p.fa").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    pretrain.main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "p.fa"), "--alphabet", "auto", "--steps", "2",
                   "--batch", "8", "--channels", "8"])
    m = load_model(tmp_path / "m")
    assert (m.config.vocab, m.config.length) == (5, 16)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["alphabet"] == "ACDEF"
    (tmp_path / "p.csv").write_text("sequence,label\n" + "".join(f"{s},{s.count('F')}\n" for s in seqs))
    oracle_main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "p.csv"), "--alphabet", "auto", "--epochs", "1"])
    cfg = DrakesConfig.from_dict({"pretrained": str(tmp_path / "m"), "reward": str(tmp_path / "o"), "eval_reward": None,
                                  "output_dir": str(tmp_path / "run"), "sample_steps": 4, "truncate_steps": 2,
                                  "batch_size": 4, "num_accum_steps": 1, "num_epochs": 2, "alpha": 0.5})
    assert train(cfg, progress=False)["epoch"] == 2
    x = sample(load_model(tmp_path / "run" / "model"), 3, steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 16) and x.max() <= 4
