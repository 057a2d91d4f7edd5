"""A synthetic DNA world with ground truth, standing in for the enhancer data and oracles of DRAKES.

"Natural" sequences come from a known hidden Markov model: an order-2 Markov background into which
transcription-factor motifs are planted (each position may start a motif; a motif's bases come from its
position weight matrix, then the background resumes). Because the generator is an HMM, naturalness is
measured exactly: :meth:`DNAWorld.log_likelihood` runs the forward algorithm.

Two hidden properties of a sequence, computed exactly from its motif hits (a hit: a window within one
mismatch of a motif's consensus):

- **activity** (the paper's HepG2 MPRA activity): a weighted sum of activator and repressor hits, hits
  near the centre counting double, plus a bonus when the GC-rich ``SP1`` and the pioneer ``FOXA`` sit
  within 40 bp of each other. Stuffing a sequence with ``SP1`` raises it without bound.
- **accessibility** (the paper's ATAC check): open chromatin needs a pioneer (``FOXA``) hit and a natural
  composition: GC fraction in [0.30, 0.58] and no homopolymer run over 6. A reward hacker that fills a
  sequence with GC-rich activators scores high activity but closes the chromatin.

Tokens: ``A C G T`` = 0..3 (``MASK`` = 4 is the diffusion model's); sequences are ``int64 [N, L]``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmreward.errors import InputFileError

ALPHABET = "ACGT"
MASK = 4
LENGTH = 200


@dataclass(frozen=True)
class Motif:
    name: str
    consensus: str
    weight: float  # contribution of one hit to activity (hits in the central window count double)
    rate: float  # probability, per background position, of starting this motif in natural sequences


MOTIFS: tuple[Motif, ...] = (
    Motif("SP1", "GGGGCGGGGC", 1.0, 0.0012),  # GC-rich activator
    Motif("ETS", "ACCGGAAGTG", 0.8, 0.0012),  # activator
    Motif("FOXA", "TGTTTACTTA", 0.6, 0.0012),  # pioneer: activator and needed for open chromatin
    Motif("OCT", "ATTTGCATAC", -1.2, 0.0020),  # repressor
    Motif("TATA", "TATAAAAGGC", 0.0, 0.0020),  # neutral
    Motif("CAAT", "CCAATCAGCG", 0.0, 0.0020),  # neutral
)
CONSENSUS_PROB = 0.9  # PWM: the consensus base, the other three share the rest
CENTRAL = (50, 150)  # a hit whose centre lies in [50, 150) counts double
COOP = ("SP1", "FOXA", 40, 0.8)  # both within 40 bp (centre to centre): +0.8, once per sequence
GC_RANGE = (0.30, 0.58)
MAX_RUN = 6


def data_alphabet(seqs: list[str]) -> str:
    """The sorted upper-case characters of a data set (its vocabulary, e.g. ``ACGT`` or 20 amino acids)."""
    return "".join(sorted({c for s in seqs for c in s.upper()}))


def encode(seqs: list[str], alphabet: str = ALPHABET) -> torch.Tensor:
    """``int64 [N, L]`` tokens (indices into ``alphabet``) of equal-length strings (case-insensitive); a clear
    error otherwise."""
    if not seqs:
        raise ValueError("no sequences")
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"sequences must share one length, got lengths {sorted(lengths)[:5]}")
    table = np.full(256, -1, dtype=np.int64)
    for i, c in enumerate(alphabet):
        table[ord(c)] = table[ord(c.lower())] = i
    out = table[np.frombuffer("".join(seqs).encode("ascii", "replace"), dtype=np.uint8)].reshape(len(seqs), -1)
    if (out < 0).any():
        row = int(np.nonzero((out < 0).any(1))[0][0])
        raise ValueError(f"sequence {row} has a character outside {alphabet}: {seqs[row][:60]!r}")
    return torch.from_numpy(out)


def decode(x: torch.Tensor, alphabet: str = ALPHABET) -> list[str]:
    """Strings of tokens ``[N, L]`` (indices into ``alphabet``)."""
    return ["".join(alphabet[i] for i in row) for row in x.tolist()]


def read_sequences(path: str | Path, column: str = "sequence") -> list[str]:
    """Sequences from FASTA (``.fa``, ``.fasta``, ``.fna``) or CSV (the ``column`` column)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"sequence file not found: {path}")
    if path.suffix.lower() in (".fa", ".fasta", ".fna"):
        seqs, cur = [], []
        for line in path.read_text().splitlines():
            if line.startswith(">"):
                if cur:
                    seqs.append("".join(cur))
                cur = []
            elif line.strip():
                cur.append(line.strip())
        if cur:
            seqs.append("".join(cur))
        return seqs
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
        return [row[column] for row in reader]


def write_fasta(path: str | Path, x: torch.Tensor, prefix: str = "seq") -> None:
    Path(path).write_text("".join(f">{prefix}{i}\n{s}\n" for i, s in enumerate(decode(x))))


class DNAWorld:
    """The generator (an HMM), its exact log-likelihood and the hidden properties. ``seed`` fixes the
    background's order-2 transition table (the world), not the samples."""

    def __init__(self, seed: int = 0, length: int = LENGTH, motifs: tuple[Motif, ...] = MOTIFS):
        self.length, self.motifs = length, motifs
        rng = np.random.default_rng(seed)
        gc_bias = np.array([1.2, 0.8, 0.8, 1.2])  # AT-rich background, as in most genomes (GC ≈ 0.4)
        self.background = rng.dirichlet(3.0 * gc_bias, size=16)  # P(x_t | x_{t-2} x_{t-1}), rows: 4·a + b
        self.marginal = gc_bias / gc_bias.sum()  # the first two positions
        self.pwm = np.stack([self._pwm(m.consensus) for m in motifs])  # [M, W, 4]
        self.rates = np.array([m.rate for m in motifs])
        if self.rates.sum() >= 1:
            raise ValueError("motif rates must sum to < 1")
        widths = {len(m.consensus) for m in motifs}
        if len(widths) != 1:
            raise ValueError("all motifs must share one width")
        self.width = widths.pop()

    @staticmethod
    def _pwm(consensus: str) -> np.ndarray:
        p = np.full((len(consensus), 4), (1 - CONSENSUS_PROB) / 3)
        p[np.arange(len(consensus)), [ALPHABET.index(c) for c in consensus]] = CONSENSUS_PROB
        return p

    # ------------------------------------------------------------------ generator
    def sample(self, n: int, rng: np.random.Generator, rate_scale: float = 1.0) -> torch.Tensor:
        """``int64 [n, L]`` sequences; ``rate_scale`` multiplies the motif rates (1 = natural; larger gives
        the motif-enriched libraries that oracles are trained on, as a designed MPRA library would)."""
        rates = self.rates * rate_scale
        if rates.sum() >= 1:
            raise ValueError(f"rate_scale {rate_scale} makes the motif rates sum to >= 1")
        L, W = self.length, self.width
        x = np.zeros((n, L), dtype=np.int64)
        motif = np.full(n, -1)  # current motif (-1: background)
        pos = np.zeros(n, dtype=np.int64)  # position inside it
        cum = np.cumsum(np.concatenate([rates, [1 - rates.sum()]]))
        for t in range(L):
            # transition from the previous state (a virtual background state before t = 0)
            in_motif = motif >= 0
            pos[in_motif] += 1
            ended = in_motif & (pos >= W)
            motif[ended] = -1
            bg = motif < 0
            start = np.searchsorted(cum, rng.random(n), side="right")  # == M: stay in background
            new = bg & ~ended & (start < len(rates))
            motif[new], pos[new] = start[new], 0
            # emission
            probs = np.empty((n, 4))
            bg = motif < 0
            if t < 2:
                probs[bg] = self.marginal
            else:
                probs[bg] = self.background[4 * x[bg, t - 2] + x[bg, t - 1]]
            probs[~bg] = self.pwm[motif[~bg], pos[~bg]]
            x[:, t] = (probs.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=3)
        return torch.from_numpy(x)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` (nats) under the natural generator, forward algorithm; ``x`` ``[N, L]`` → ``[N]``."""
        x = torch.as_tensor(x).long()
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"expected sequences [N, {self.length}], got {tuple(x.shape)}")
        if ((x < 0) | (x > 3)).any():
            raise ValueError("sequences must hold tokens 0..3 (ACGT)")
        n, L = x.shape
        log_rates = torch.from_numpy(np.log(self.rates))
        log_stay = math.log(1 - self.rates.sum())
        log_pwm = torch.from_numpy(np.log(self.pwm))  # [M, W, 4]
        log_bg = torch.from_numpy(np.log(self.background))  # [16, 4]
        log_marg = torch.from_numpy(np.log(self.marginal))
        a_bg = torch.zeros(n, dtype=torch.float64)  # the virtual background state before t = 0
        a_m = torch.full((n, len(self.motifs), self.width), -math.inf, dtype=torch.float64)
        for t in range(L):
            xt = x[:, t]
            e_bg = log_marg[xt] if t < 2 else log_bg[4 * x[:, t - 2] + x[:, t - 1], xt]
            e_m = log_pwm[:, :, xt].permute(2, 0, 1)  # [N, M, W]
            new_m = torch.empty_like(a_m)
            new_m[:, :, 0] = a_bg[:, None] + log_rates[None]
            new_m[:, :, 1:] = a_m[:, :, :-1]
            into_bg = torch.logaddexp(a_bg + log_stay, torch.logsumexp(a_m[:, :, -1], 1))
            a_bg, a_m = into_bg + e_bg, new_m + e_m
        return torch.logaddexp(a_bg, torch.logsumexp(a_m.flatten(1), 1))

    # ------------------------------------------------------------- hidden properties
    def hits(self, x: torch.Tensor) -> torch.Tensor:
        """``bool [N, M, L − W + 1]``: motif m starts at position p (at most one mismatch to its consensus)."""
        x = torch.as_tensor(x).long()
        cons = torch.tensor([[ALPHABET.index(c) for c in m.consensus] for m in self.motifs])  # [M, W]
        windows = x.unfold(1, self.width, 1)  # [N, P, W]
        mism = (windows[:, None] != cons[None, :, None]).sum(-1)  # [N, M, P]
        return mism <= 1

    def activity(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden activity ``[N]`` (float64)."""
        h = self.hits(x).double()
        centre = torch.arange(h.shape[-1]) + self.width / 2
        pos_w = torch.where((centre >= CENTRAL[0]) & (centre < CENTRAL[1]), 2.0, 1.0).double()
        w = torch.tensor([m.weight for m in self.motifs], dtype=torch.float64)
        act = ((h * pos_w).sum(-1) * w).sum(-1)
        names = [m.name for m in self.motifs]
        a, b, dist, bonus = COOP
        ha, hb = h[:, names.index(a)], h[:, names.index(b)]
        close = (centre[:, None] - centre[None, :]).abs() <= dist  # [P, P]
        coop = torch.einsum("np,pq,nq->n", ha, close.double(), hb) > 0
        return act + bonus * coop.double()

    def gc_fraction(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        return ((x == 1) | (x == 2)).double().mean(1)

    @staticmethod
    def longest_run(x: torch.Tensor) -> torch.Tensor:
        """Longest homopolymer run ``[N]``."""
        x = torch.as_tensor(x)
        run = torch.ones(x.shape[0], dtype=torch.long)
        best = run.clone()
        for t in range(1, x.shape[1]):
            run = torch.where(x[:, t] == x[:, t - 1], run + 1, torch.ones_like(run))
            best = torch.maximum(best, run)
        return best

    def accessible(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden accessibility ``bool [N]``: a pioneer (FOXA) hit and a natural composition."""
        names = [m.name for m in self.motifs]
        pioneer = self.hits(x)[:, names.index("FOXA")].any(-1)
        gc = self.gc_fraction(x)
        return pioneer & (gc >= GC_RANGE[0]) & (gc <= GC_RANGE[1]) & (self.longest_run(x) <= MAX_RUN)


# ------------------------------------------------------------------------------- set statistics
def kmer_frequencies(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """``[4^k]`` normalised k-mer counts of a set of sequences ``[N, L]``."""
    x = torch.as_tensor(x).long()
    codes = torch.zeros(x.shape[0], x.shape[1] - k + 1, dtype=torch.long)
    for j in range(k):
        codes = codes * 4 + x[:, j : x.shape[1] - k + 1 + j]
    counts = torch.bincount(codes.flatten(), minlength=4**k).double()
    return counts / counts.sum()


def kmer_correlation(x: torch.Tensor, reference: torch.Tensor, k: int = 3) -> float:
    """Pearson correlation of the k-mer frequencies of two sets (the paper's 3-mer Corr)."""
    a, b = kmer_frequencies(x, k), kmer_frequencies(reference, k)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def diversity(x: torch.Tensor, max_pairs: int = 20000, seed: int = 0) -> float:
    """Mean pairwise Hamming distance (fraction of positions) within a set ``[N, L]``."""
    x = torch.as_tensor(x)
    n = x.shape[0]
    if n < 2:
        return 0.0
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (max_pairs,), generator=g)
    j = torch.randint(n - 1, (max_pairs,), generator=g)
    j = j + (j >= i).long()
    return float((x[i] != x[j]).double().mean())
