"""Vector-quantisation bottleneck with an EMA (k-means style) codebook, as in Jukebox.

The codebook learns without gradients: each training batch assigns every encoder vector to its
nearest code, and exponential moving averages of the per-code counts and sums move every code
towards the mean of the vectors assigned to it. Codes whose EMA count falls below a threshold are
restarted from random current encoder outputs. The encoder learns through the straight-through
estimator and the commitment loss ||z_e - sg(z_q)||^2.

The threshold: with `restart_relative` it is `restart_threshold` times the count a code would get
if the step's M vectors were spread evenly over the K codes (M / K), and a restarted code starts
at that even share; otherwise it is the absolute count `restart_threshold`. An absolute threshold
does not scale: at 44.1 kHz a batch of 16 x 0.4 s gives the top level ~2,200 vectors for 2,048
codes, so a threshold of 1.0 sits at the even share and restarts most codes every step, and at
batch 1 it restarts all of them. A relative one restarts the same share at any batch size.
`restart_max_share` caps the codes restarted in one step (the least used go first): codes that went
unused since initialisation all fall below the threshold in the same step otherwise.

Under `torch.distributed` (any backend) and in training mode, counts and sums are all-reduced
before the EMA update, and initialisation / restart candidates are drawn on rank 0 and broadcast,
so that every rank keeps a bit-identical codebook.

All codebook state lives in registered buffers (`embeddings`, `ema_counts`, `ema_sums`,
`initialised`), so `state_dict()` and safetensors round-trip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class CodebookError(ValueError):
    """Bad argument or input shape for a codebook."""


@dataclass(frozen=True)
class QuantizedResult:
    """What `EMACodebook.forward` returns.

    z_q: Tensor[B x D x N], quantised vectors; gradients pass straight through to the input.
    codes: LongTensor[B x N], index of the nearest code for every vector.
    commit_loss: scalar Tensor, mean over elements of (z_e - sg(z_q))^2 (unweighted).
    usage: scalar Tensor, fraction of the codebook used at least once in the batch
        (counted over all ranks when training under torch.distributed).
    perplexity: scalar Tensor, exp(entropy) of the batch's code histogram (1 .. codebook_size).
    restarts: scalar Tensor, fraction of the codebook restarted by this step (0 outside training).
    """

    z_q: Tensor
    codes: Tensor
    commit_loss: Tensor
    usage: Tensor
    perplexity: Tensor
    restarts: Tensor


def _distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nearest_codes(vectors: Tensor, embeddings: Tensor, *, max_elements: int | None = None) -> Tensor:
    """Index of the nearest code (Euclidean) for every vector; ties go to the lowest index.

    vectors: Tensor[M x D]; embeddings: Tensor[K x D] -> LongTensor[M].
    The M x K distance matrix is built in chunks of at most `max_elements` entries; by default 2**19
    on CPU (2 MiB of float32, so that a chunk stays in cache between the product and the minimum)
    and 2**24 on accelerators (few, large kernels).
    """
    if max_elements is None:
        max_elements = 2**19 if vectors.device.type == "cpu" else 2**24
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, and ||z||^2 is the same for every code of a row, so
    # rank by [z, 1] . [-2e, ||e||^2]: one matrix product, no separate pass to add the norms.
    codebook = torch.cat([-2.0 * embeddings, embeddings.pow(2).sum(dim=1, keepdim=True)], dim=1)  # (K, D+1)
    augmented = torch.cat([vectors, vectors.new_ones(vectors.shape[0], 1)], dim=1)  # (M, D+1)
    chunk = max(1, max_elements // embeddings.shape[0])
    codes = []
    for start in range(0, vectors.shape[0], chunk):
        distances = augmented[start : start + chunk] @ codebook.t()  # (m, K), up to the constant ||z||^2
        codes.append(distances.min(dim=1).indices)  # same as argmin (first minimum), several times faster on CPU
    if not codes:
        return torch.zeros(0, dtype=torch.long, device=vectors.device)
    return torch.cat(codes)


def code_statistics(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Usage (fraction of codes with a non-zero count) and perplexity of a histogram Tensor[K]."""
    usage = (counts > 0).float().mean()
    probs = counts / counts.sum().clamp(min=1.0)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return usage, entropy.exp()


class EMACodebook(nn.Module):
    """A codebook of `codebook_size` vectors of width `code_width`, learned by EMA k-means.

    Training mode: initialises from the first batch, updates the EMA and restarts dead codes.
    Eval mode: pure nearest-neighbour quantisation, nothing changes.
    """

    def __init__(
        self,
        *,
        codebook_size: int,
        code_width: int,
        decay: float = 0.99,
        restart_threshold: float = 1.0,
        restart_relative: bool = False,
        restart_max_share: float = 1.0,
        restart_noise: float = 0.01,
        epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or code_width < 1:
            raise CodebookError(f"codebook_size and code_width must be >= 1, got {codebook_size}, {code_width}")
        if not 0.0 <= decay < 1.0:
            raise CodebookError(f"decay must be in [0, 1), got {decay}")
        if restart_threshold < 0.0 or restart_noise < 0.0:
            raise CodebookError("restart_threshold and restart_noise must be >= 0")
        if not 0.0 < restart_max_share <= 1.0:
            raise CodebookError(f"restart_max_share must be in (0, 1], got {restart_max_share}")
        self.codebook_size = codebook_size
        self.code_width = code_width
        self.decay = decay
        self.restart_threshold = restart_threshold
        self.restart_relative = restart_relative
        self.restart_max = max(1, int(restart_max_share * codebook_size))  # codes restarted per step at most
        self.restart_noise = restart_noise
        self.epsilon = epsilon
        # Placeholder values until the first training batch replaces them with encoder outputs.
        self.register_buffer("embeddings", torch.randn(codebook_size, code_width))
        self.register_buffer("ema_counts", torch.zeros(codebook_size))
        self.register_buffer("ema_sums", torch.zeros(codebook_size, code_width))
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer("restarted", torch.zeros(()), persistent=False)  # share restarted by the last step

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, code_width={self.code_width}, decay={self.decay}"

    def _check_vectors(self, z: Tensor) -> None:
        if z.dim() != 3 or z.shape[1] != self.code_width:
            raise CodebookError(f"expected Tensor[B x {self.code_width} x N], got shape {tuple(z.shape)}")

    def _flatten(self, z: Tensor) -> Tensor:
        """Tensor[B x D x N] -> float32 Tensor[(B*N) x D], detached."""
        return z.detach().float().transpose(1, 2).reshape(-1, self.code_width)  # (B*N, D)

    @staticmethod
    def _total(vectors: Tensor) -> int:
        """Vectors in this step over all ranks (equal batches on every rank), known without a device sync."""
        return vectors.shape[0] * (dist.get_world_size() if _distributed() else 1)

    def _threshold(self, vectors: int) -> float:
        """EMA count below which a code is restarted, for a step of `vectors` vectors (all ranks)."""
        if self.restart_relative:
            return self.restart_threshold * vectors / self.codebook_size
        return self.restart_threshold

    def _fresh_count(self, vectors: int) -> float:
        """EMA count given to a newly initialised or restarted code, for a step of `vectors` vectors (all ranks)."""
        if self.restart_relative:
            return max(self._threshold(vectors), vectors / self.codebook_size)
        return max(self.restart_threshold, 1.0)

    def _sample_candidates(self, vectors: Tensor, *, always_jitter: bool) -> Tensor:
        """K random rows of vectors Tensor[M x D] (plus noise) -> Tensor[K x D], identical on every rank."""
        count = vectors.shape[0]
        if count >= self.codebook_size and not always_jitter:
            picked = vectors[torch.randperm(count, device=vectors.device)[: self.codebook_size]]
        else:
            index = torch.randint(count, (self.codebook_size,), device=vectors.device)
            scale = self.restart_noise * vectors.std(correction=0).clamp(min=self.epsilon)
            picked = vectors[index] + scale * torch.randn_like(vectors[index])
        if _distributed():
            dist.broadcast(picked, src=0)
        return picked

    @torch.no_grad()
    def _initialise(self, vectors: Tensor, total: int) -> None:
        """Set every code to a (distinct where possible) random encoder output Tensor[M x D]; `total`: M over all ranks."""
        candidates = self._sample_candidates(vectors, always_jitter=vectors.shape[0] < self.codebook_size)
        fresh = self._fresh_count(total)
        self.embeddings.copy_(candidates)
        self.ema_counts.fill_(fresh)
        self.ema_sums.copy_(candidates * fresh)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, vectors: Tensor, codes: Tensor, counts: Tensor) -> None:
        """EMA update from vectors Tensor[M x D], their codes LongTensor[M] and histogram Tensor[K]."""
        sums = torch.zeros_like(self.ema_sums).index_add_(0, codes, vectors)  # (K, D)
        if _distributed():
            dist.all_reduce(sums)
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        alive = self.ema_counts > self.epsilon
        means = self.ema_sums / self.ema_counts.clamp(min=self.epsilon).unsqueeze(1)  # (K, D)
        self.embeddings.copy_(torch.where(alive.unsqueeze(1), means, self.embeddings))
        if self.restart_threshold > 0.0:
            self._restart_dead(vectors, self._total(vectors))

    @torch.no_grad()
    def _restart_dead(self, vectors: Tensor, total: int) -> None:
        """Move codes whose EMA count is below the threshold onto random current vectors Tensor[M x D]."""
        dead = self.ema_counts < self._threshold(total)  # (K,)
        if self.restart_max < self.codebook_size:  # only the least used ones, so no step replaces the codebook
            rank = torch.empty_like(self.ema_counts, dtype=torch.long)
            rank[self.ema_counts.argsort(stable=True)] = torch.arange(self.codebook_size, device=rank.device)
            dead &= rank < self.restart_max
        dead = dead.unsqueeze(1)  # (K, 1)
        self.restarted.copy_(dead.float().mean())
        candidates = self._sample_candidates(vectors, always_jitter=True)
        fresh = self._fresh_count(total)
        self.embeddings.copy_(torch.where(dead, candidates, self.embeddings))
        self.ema_sums.copy_(torch.where(dead, candidates * fresh, self.ema_sums))
        self.ema_counts.copy_(torch.where(dead.squeeze(1), torch.full_like(self.ema_counts, fresh), self.ema_counts))

    def forward(self, z: Tensor) -> QuantizedResult:
        """Quantise encoder outputs z Tensor[B x D x N]; in training mode also update the codebook."""
        self._check_vectors(z)
        batch, _, length = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            vectors = self._flatten(z)  # (B*N, D)
            if self.training and vectors.shape[0] > 0 and not bool(self.initialised):
                self._initialise(vectors, self._total(vectors))
            embeddings = self.embeddings.float()
            codes = nearest_codes(vectors, embeddings)  # (B*N,)
            counts = torch.bincount(codes, minlength=self.codebook_size).float()  # (K,)
            z_q = F.embedding(codes, embeddings).view(batch, length, -1).transpose(1, 2)  # (B, D, N)
            if self.training:
                if _distributed():
                    dist.all_reduce(counts)
                if vectors.shape[0] > 0:
                    self._update(vectors, codes, counts)
            z_e = z.float()
            commit_loss = F.mse_loss(z_e, z_q)
            z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
            usage, perplexity = code_statistics(counts)
        restarts = self.restarted.clone() if self.training and self.restart_threshold > 0.0 else torch.zeros(())
        return QuantizedResult(
            z_q=z_q.to(z.dtype),
            codes=codes.view(batch, length),
            commit_loss=commit_loss,
            usage=usage,
            perplexity=perplexity,
            restarts=restarts.to(counts.device),
        )

    @torch.no_grad()
    def quantize(self, z: Tensor) -> Tensor:
        """Nearest codes for z Tensor[B x D x N] -> LongTensor[B x N]; never changes the codebook."""
        self._check_vectors(z)
        batch, _, length = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes = nearest_codes(self._flatten(z), self.embeddings.float())
        return codes.view(batch, length)

    def dequantize(self, codes: Tensor) -> Tensor:
        """Code vectors for codes LongTensor[B x N] -> Tensor[B x D x N]."""
        if codes.dim() != 2 or codes.dtype not in (torch.int32, torch.int64):
            raise CodebookError(f"expected integer codes of shape [B x N], got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            low, high = int(codes.min()), int(codes.max())
            raise CodebookError(f"codes must lie in [0, {self.codebook_size}), got [{low}, {high}]")
        return F.embedding(codes.long(), self.embeddings).transpose(1, 2)  # (B, N, D) -> (B, D, N)
