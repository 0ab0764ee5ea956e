"""SINAREQ / WaveQ: learn each layer's bitwidth and scale through the sinusoid's period.

Paper: Elthakeb, Pilligundla, Mireshghallah, Elgindi, Deledalle, Esmaeilzadeh, "WaveQ / SINAREQ:
Gradient-Based Deep Quantization of Neural Networks through Sinusoidal Adaptive Regularization"
(METHODS.md section 3). Per learned layer l, a continuous bitwidth β_l and a scale α_l:

    u = w / α_l
    R_l(w; β, α) = mean_i sin^2( π (u_i - o(β_l)) / Δ(β_l) ) / 2^β_l          (the "R1" variant)
    L = L_task + λ_w(t) Σ_l R_l + λ_β(t) B(β)
    B = Σ_l β_l                                               (pressure "sum", the paper's)
    B = relu(mean_bits(β) - target)                           (pressure "budget")

Geometry Δ(β), o(β): the weight quantizer family's own ``spacing``/``offset`` at continuous β in
its unit range (DoReFa: Δ = 2/(2^β - 1), o = Δ/2; WRPN and TWN: Δ = 1/(2^(β-1) - 1), o = 0). LSQ's
class geometry is in units of its step (Δ = 1 whatever the bits), so WaveQ uses LSQ's unit-range
view: levels m / 2^(β-1), i.e. Δ = 2^(1-β), o = 0 (the LSQ step is then α / 2^(k-1)).

Domain: ``raw`` is METHODS' u = w/α for every quantizer. ``aligned`` (default) is the same for
WRPN, TWN and LSQ (their levels are uniform in w/α: exact once the fine-tune copies α into their
scale); for DoReFa (and PACT's DoReFa weights), whose levels are uniform in tanh space, it is
u = tanh(w/α) / tanh(1): DoReFa's own map at scale α, exact when max|w| = α (the fine-tune's learned
scale starts at α; the range term keeps |w| <= α). Measured on LeNet-5 at 2 bits, the raw grid
did not match DoReFa's and the fine-tune after it lost accuracy (see the WaveQ benchmark).

- Range term (``range_penalty``, on by default; our addition, not in the paper): the sinusoid is
  periodic and cannot see where the grid ends, so lowering β and α together keeps the grid's step
  in weight space fine for free (measured on LeNet: α fell from 0.65 to 0.26 while β went 8 -> 6).
  A weight beyond the outer levels (|u| > 1) adds ((u - clamp(u, -1, 1)) / Δ)^2, the clipping error
  in grid steps, inside the same mean and 1/2^β.
- β's gradient is multiplied by ``beta_lr_scale`` (10): at the network's learning rate β would move
  about a bit per thousand steps, so the learned plan would say more about the epoch count than
  about the layers.
- β is clamped to [b_min, b_max] after every optimizer step (projected gradient: the released code
  had no clamp and β could collapse towards 0); α stays >= 1e-8.
- ``mean_bits`` counts every quantized layer, pinned ones included at their pinned bits, so a
  budget is a budget on the ``avg_bits`` (``weighting="layers"``) or ``weighted_bits``
  (``weighting="params"``) a run reports.
- Three-phase schedule (``lowbit.reg.schedules``): λ_w = λ·f(t, 0.2), λ_β = c_β (f(t, 0.2) -
  f(t, 0.8)); at progress ``freeze_at`` (0.8) β is frozen at its integer value (the rounding rule
  below) and phase 3 snaps the weights onto that grid.
- Integer bits: ``round`` (half up: floor(β + 1/2)) or ``ceil``, then clamped to the allowed set
  (integers in [b_min, b_max] unless ``allowed_bits`` says otherwise; ``round`` takes the nearest
  allowed value, ties going up, ``ceil`` the smallest allowed value >= β). With a budget, if the
  rounded plan's mean bits exceed it, the layer rounded up the most (largest bits - β; ties: the
  earliest) drops to the next allowed value, until the budget is met.
- Fixed-period mode (``learn_bits=False, learn_scale=False``): β and α stay at their initial values,
  and with ``normalize_bits=False`` R_l is exactly SinReQ's penalty in the ``raw`` domain at α = 1.
- First and last quantizable layers are pinned (8 bits, as ``lowbit.plan``'s pin) and carry no
  β unless ``pin_first_last=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, did_you_mean
from lowbit.nn.convert import quantizable_layers
from lowbit.plan import PIN_BITS, pinned_layers
from lowbit.quant.registry import FAMILIES
from lowbit.quant.ste import grad_scale
from lowbit.reg.schedules import three_phase_bits, three_phase_weight
from lowbit.reg.sinreq import sin2_grid
from lowbit.train.loop import LossTerm

DOMAINS = ("aligned", "raw")
WEIGHTINGS = ("layers", "params")
ROUNDINGS = ("round", "ceil")
MIN_ALPHA = 1e-8


@dataclass(frozen=True)
class WaveQConfig:
    """WaveQ's settings; ``budget`` switches the bit pressure to the budget form."""

    quantizer: str = "dorefa"  # whose level geometry the sinusoid follows
    domain: str = "aligned"  # u = w/α ("raw") or the quantizer's own map at scale α ("aligned")
    lambda_w: float = 1.0  # λ of the sinusoid (three-phase: λ·f(t, 0.2))
    c_beta: float = 0.05  # λ_β = c_β (f(t, 0.2) - f(t, 0.8))
    budget: float | None = None  # target mean bits (pressure "budget"); None: pressure "sum"
    weighting: str = "layers"  # budget over layers (avg_bits) or parameters (weighted_bits)
    bits_min: float = 2.0
    bits_max: float = 8.0
    beta_init: float = 8.0
    allowed_bits: tuple[int, ...] | None = None  # default: the integers in [bits_min, bits_max]
    rounding: str = "round"
    freeze_at: float = 0.8
    learn_bits: bool = True
    learn_scale: bool = True
    normalize_bits: bool = True  # the 1/2^β factor
    range_penalty: bool = True  # our addition: weights beyond the outer levels pay (distance / Δ)^2
    beta_lr_scale: float = 10.0  # β's gradient is multiplied by this (its step is lr * scale)
    pin_first_last: bool = True
    pin_bits: int = PIN_BITS

    def __post_init__(self) -> None:
        if self.quantizer not in FAMILIES:
            raise ConfigError(f"WaveQ has no level geometry for quantizer {self.quantizer!r}"
                              f"{did_you_mean(str(self.quantizer), FAMILIES)}; choose one of {', '.join(FAMILIES)}")
        for name in ("lambda_w", "c_beta", "bits_min", "bits_max", "beta_init", "freeze_at", "beta_lr_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"WaveQ {name} must be a finite number, got {value!r}")
        if self.lambda_w < 0 or self.c_beta < 0 or self.beta_lr_scale <= 0:
            raise ConfigError(f"WaveQ lambda_w and c_beta must be >= 0 and beta_lr_scale > 0, got {self.lambda_w}, "
                              f"{self.c_beta} and {self.beta_lr_scale}")
        if not 2 <= self.bits_min <= self.bits_max <= 8:
            raise ConfigError(f"WaveQ bits range must satisfy 2 <= bits_min <= bits_max <= 8, got "
                              f"[{self.bits_min}, {self.bits_max}] (the sinusoid's period is undefined below 2 bits)")
        if not self.bits_min <= self.beta_init <= self.bits_max:
            raise ConfigError(f"WaveQ beta_init {self.beta_init} lies outside [{self.bits_min}, {self.bits_max}]")
        if not 0.0 < self.freeze_at <= 1.0:
            raise ConfigError(f"WaveQ freeze_at must be a progress in (0, 1], got {self.freeze_at}")
        if self.domain not in DOMAINS:
            raise ConfigError(f"unknown WaveQ domain {self.domain!r}; choose one of {', '.join(DOMAINS)}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"unknown budget weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"unknown rounding {self.rounding!r}; choose one of {', '.join(ROUNDINGS)}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
                                            and self.budget > 0):
            raise ConfigError(f"WaveQ budget must be a positive number of bits, got {self.budget!r}")
        if not 1 <= self.pin_bits <= 8:
            raise ConfigError(f"pin_bits must be in 1..8, got {self.pin_bits}")
        if not self.allowed():
            raise ConfigError(f"no allowed bitwidth in [{self.bits_min}, {self.bits_max}]"
                              + (f" among {self.allowed_bits}" if self.allowed_bits else ""))

    @property
    def pressure(self) -> str:
        return "sum" if self.budget is None else "budget"

    def allowed(self) -> list[int]:
        candidates = self.allowed_bits if self.allowed_bits is not None else range(1, 9)
        return sorted({int(b) for b in candidates if self.bits_min <= b <= self.bits_max})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pressure": self.pressure, "allowed_bits": self.allowed()}


def integer_bits(beta: Sequence[float], config: WaveQConfig) -> list[int]:
    """Each β rounded by ``config.rounding`` and clamped to the allowed set (no budget repair)."""
    allowed = config.allowed()
    out = []
    for value in beta:
        value = min(max(float(value), config.bits_min), config.bits_max)
        if config.rounding == "ceil":
            out.append(next((b for b in allowed if b >= value - 1e-9), allowed[-1]))
        else:  # nearest allowed value, ties going up (floor(β + 1/2) when all integers are allowed)
            out.append(min(allowed, key=lambda b: (abs(b - value), -b)))
    return out


class WaveQParams(nn.Module):
    """β and α of the learned layers (one entry each, in model order), and the freeze state."""

    def __init__(self, names: Sequence[str], alpha_init: torch.Tensor, beta_init: float) -> None:
        super().__init__()
        self.names = list(names)
        self.beta = nn.Parameter(torch.full((len(names),), float(beta_init)))
        self.alpha = nn.Parameter(alpha_init.detach().clone().float())
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))


class WaveQModel(nn.Module):
    """The float network with WaveQ's β and α attached, so ``fit`` trains and checkpoints both."""

    def __init__(self, net: nn.Module, params: WaveQParams) -> None:
        super().__init__()
        self.net = net
        self.waveq = params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def is_waveq_param(name: str) -> bool:
    """β and α get no weight decay."""
    return name.startswith("waveq.")


class WaveQ:
    """The regularizer, bit pressure, projection/freeze and read-outs for one float network.

    ``WaveQ(net, config).wrap()`` returns the ``WaveQModel`` to train; ``loss_terms()`` and
    ``step_callback`` plug into ``lowbit.train.fit``; ``plan_bits()`` gives the integer plan.
    """

    def __init__(self, net: nn.Module, config: WaveQConfig) -> None:
        self.config = config
        layers = quantizable_layers(net)
        if not layers:
            raise ConfigError("WaveQ needs a model with Conv1d/Conv2d/Linear layers")
        names = list(layers)
        pinned = pinned_layers(names, config.pin_first_last)
        self.order = names
        self.pinned = [n for n in names if n in pinned]
        learned = [n for n in names if n not in pinned]
        if not learned:
            raise ConfigError(f"WaveQ has no layer to learn bits for: the model's {len(names)} quantizable layer(s) "
                              "are the pinned first/last ones (use pin_first_last=False)")
        self.layers = [layers[n] for n in learned]
        self.counts = {n: layers[n].weight.numel() for n in names}
        by_params = config.weighting == "params"
        self._learned_weights = [float(self.counts[n]) if by_params else 1.0 for n in learned]
        self._pinned_weight = float(sum(self.counts[n] if by_params else 1 for n in self.pinned))
        self._weight_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.weight_quantizer = FAMILIES[config.quantizer].weight  # the level geometry the sinusoid follows
        alpha = torch.stack([m.weight.detach().abs().max().clamp_min(MIN_ALPHA) for m in self.layers])
        self.params = WaveQParams(learned, alpha, config.beta_init)
        self.params.beta.requires_grad_(config.learn_bits)
        self.params.alpha.requires_grad_(config.learn_scale)
        self._check_budget_feasible()
        self._model = WaveQModel(net, self.params)

    @property
    def names(self) -> list[str]:
        return self.params.names

    def wrap(self) -> WaveQModel:
        """The network and β/α in one module (the same object on every call)."""
        return self._model

    # ---- the loss -------------------------------------------------------------------------
    def _beta_alpha(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        learning = self.config.learn_bits and not bool(p.frozen)
        beta = grad_scale(p.beta, self.config.beta_lr_scale) if learning else p.beta.detach()
        alpha = p.alpha if self.config.learn_scale else p.alpha.detach()
        return beta, alpha.abs().clamp_min(MIN_ALPHA)

    def layer_penalties(self) -> torch.Tensor:
        """R_l of every learned layer, shape [L]."""
        beta, alpha = self._beta_alpha()
        spacing, offset = self.weight_quantizer.unit_geometry(beta)
        terms = []
        for i, layer in enumerate(self.layers):
            u = self._normalized(layer.weight, alpha[i])
            values = sin2_grid(u, spacing[i], offset[i])
            if self.config.range_penalty:
                values = values + torch.square((u - u.clamp(-1.0, 1.0)) / spacing[i])
            r = values.mean() if values.numel() else values.new_zeros(())
            terms.append(r / torch.pow(2.0, beta[i]) if self.config.normalize_bits else r)
        return torch.stack(terms)

    def _normalized(self, w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if self.config.domain == "aligned":
            return self.weight_quantizer.unit_normalize(w, alpha)
        return w / alpha

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """Σ_l R_l (the sinusoid term; ``model`` is ignored, the layers are bound at construction)."""
        return self.layer_penalties().sum()

    def mean_bits(self, beta: torch.Tensor | None = None) -> torch.Tensor:
        """Mean bits over all quantized layers (pinned at ``pin_bits``), by layers or parameters."""
        beta = self._beta_alpha()[0] if beta is None else beta
        key = (beta.device, beta.dtype)
        if key not in self._weight_cache:  # built once per device: this runs at every training step
            self._weight_cache[key] = torch.tensor(self._learned_weights, dtype=beta.dtype, device=beta.device)
        total = (beta * self._weight_cache[key]).sum() + self.config.pin_bits * self._pinned_weight
        return total / (sum(self._learned_weights) + self._pinned_weight)

    def bit_pressure(self, model: nn.Module | None = None) -> torch.Tensor:
        """B(β): Σ β (pressure ``sum``) or relu(mean_bits(β) - budget) (pressure ``budget``)."""
        beta = self._beta_alpha()[0]
        if self.config.pressure == "sum":
            return beta.sum()
        return torch.relu(self.mean_bits(beta) - self.config.budget)

    def loss_terms(self) -> list[LossTerm]:
        """The sinusoid with λ_w(t) and the bit pressure with λ_β(t) (three-phase schedule)."""
        return [LossTerm("waveq", self.penalty, three_phase_weight(self.config.lambda_w)),
                LossTerm("waveq_bits", self.bit_pressure, three_phase_bits(self.config.c_beta))]

    # ---- after every step -----------------------------------------------------------------
    @torch.no_grad()
    def step_callback(self, model: nn.Module, progress: float) -> None:
        """Project β into [b_min, b_max] and α above 0; freeze β at its integer plan at ``freeze_at``."""
        p = self.params
        p.beta.clamp_(self.config.bits_min, self.config.bits_max)
        p.alpha.copy_(p.alpha.abs().clamp_min(MIN_ALPHA))
        if not bool(p.frozen) and progress >= self.config.freeze_at - 1e-12:
            self.freeze()

    @torch.no_grad()
    def freeze(self) -> None:
        """β := its integer plan (budget met), and no more gradient for β."""
        bits = self.plan_bits()
        self.params.beta.copy_(torch.tensor([float(bits[n]) for n in self.names]))
        self.params.frozen.fill_(True)

    # ---- read-outs ------------------------------------------------------------------------
    def beta(self) -> dict[str, float]:
        return dict(zip(self.names, self.params.beta.detach().clamp(self.config.bits_min, self.config.bits_max)
                        .tolist()))

    def alpha(self) -> dict[str, float]:
        return dict(zip(self.names, self.params.alpha.detach().abs().clamp_min(MIN_ALPHA).tolist()))

    def plan_bits(self) -> dict[str, int]:
        """Integer weight bits of every quantizable layer: learned ones rounded (budget met), pins."""
        beta = self.beta()
        bits = dict(zip(self.names, integer_bits(list(beta.values()), self.config)))
        if self.config.budget is not None:
            self._meet_budget(bits, beta)
        return {n: bits.get(n, self.config.pin_bits) for n in self.order}

    def _integer_mean(self, bits: dict[str, int]) -> float:
        return float(self.mean_bits(torch.tensor([float(bits[n]) for n in self.names], dtype=torch.float64)))

    def _meet_budget(self, bits: dict[str, int], beta: dict[str, float]) -> None:
        allowed = self.config.allowed()
        while self._integer_mean(bits) > self.config.budget + 1e-9:
            lowerable = [n for n in self.names if bits[n] > allowed[0]]
            if not lowerable:
                break  # infeasible budgets are refused at construction
            name = max(lowerable, key=lambda n: (bits[n] - beta[n], -self.names.index(n)))
            bits[name] = max(b for b in allowed if b < bits[name])

    def _check_budget_feasible(self) -> None:
        if self.config.budget is None:
            return
        lowest = self._integer_mean({n: self.config.allowed()[0] for n in self.names})
        if lowest > self.config.budget + 1e-9:
            raise ConfigError(f"WaveQ budget {self.config.budget} bits cannot be met: with the pinned layers at "
                              f"{self.config.pin_bits} bits and every other at {self.config.allowed()[0]}, the mean "
                              f"({self.config.weighting}) is {lowest:.3f}")

    def epoch_fields(self, epoch: int, model: nn.Module) -> dict[str, Any]:
        """metrics.jsonl fields: β, α, the integer plan and the mean bits now."""
        bits = self.plan_bits()
        return {"waveq_beta": self.beta(), "waveq_alpha": self.alpha(), "waveq_bits": bits,
                "waveq_frozen": bool(self.params.frozen),
                "waveq_mean_bits": float(self.mean_bits(self.params.beta.detach()))}
