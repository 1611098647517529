"""The gradient-regularization variants: each one `Variant` registered here, that every part of gnp-ray reads.

A variant owns its step: one pass (g = g1), two passes or double backprop. A two-pass variant owns its
perturbation e and its mix (a, b), which gnp.optim's `_two_pass_step` (Algorithm 1 of the GNP paper) calls:

    g1 = ∇L(θ);  θ' = θ + e;  g2 = ∇L(θ');  g = a·g1 + b·g2;  the base optimizer steps with g from θ.

The config validation, the command lines of `gnp.train` and `jobs.grid` and `analysis` (table labels, the α
figure) read the rest. Adding a variant is one `Variant(...)` below and its test. `table()` is the maths of
them all (`python -m gnp.variants` prints it; the README's copy is checked against it).

Torch-free: the grid driver and analysis import this module without loading torch, so a perturbation is
written with the tensor operations the optimizer hands it (a `gnp.optim.FirstPass`: mul, norm, per).

Every variant takes the same (α, r) pair. α = 0 makes any variant plain training (one pass), so a two-pass
cell at α = 0 is run and reported as `standard`; a variant that is another one at a fixed α (SAM is GNP at
α = 1) is named for that α.
"""

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gnp.errors import UserError


class Step(enum.StrEnum):
    ONE_PASS = "one pass"
    TWO_PASSES = "two passes"
    DOUBLE_BACKPROP = "double backprop"


# ---- perturbations e (tensors like θ) from what pass 1 left (a gnp.optim.FirstPass) --------------------------


def normalized_ascent(first):
    """e = r·g1/‖g1‖ (θ' = θ when g1 = 0)."""
    return first.mul(first.g1, first.per(first.r, first.g1_norm))


def forward_difference(first):
    """e = r·g1."""
    return first.mul(first.g1, first.r)


def backward_difference(first):
    """e = −r·g1."""
    return first.mul(first.g1, -first.r)


def adaptive_ascent(first):
    """e = r·T²g1/‖T·g1‖ with T = |θ| + η on weights and 1 on biases, as Kwon et al.'s code."""
    eta = first.options["eta"]
    t = [p.abs() + eta if first.is_weight(p) else p.new_ones(p.shape) for p in first.params]
    t_g1 = first.mul(t, first.g1)
    return first.mul(first.mul(t_g1, t), first.per(first.r, first.norm(t_g1)))


# ---- mixes: (a, b) of g = a·g1 + b·g2 at α (b ≠ 0 for α ≠ 0) --------------------------------------------------


def interpolation(alpha):
    """g = (1 − α)·g1 + α·g2."""
    return 1 - alpha, alpha


def extrapolation(alpha):
    """g = (1 + α)·g1 − α·g2, the backward difference's sign."""
    return 1 + alpha, -alpha


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the scheme's name in result tables
    about: str  # what it is, with its source
    g: str  # the update's formula, for the table and --help
    follows: str  # the gradient g equals or approximates
    step: Step = Step.TWO_PASSES
    perturbation: Callable | None = None  # two passes: e from pass 1 (a gnp.optim.FirstPass)
    mix: Callable[[float], tuple[float, float]] | None = None  # two passes: (a, b) at α
    theta_prime: str = "—"  # θ', for the table and --help
    fixed_alpha: float | None = None  # the only α it takes (standard 0, sam 1); None: any finite α
    alias_of: str | None = None  # the variant it equals at fixed_alpha (sam is gnp at α = 1)
    ddp: bool = True  # runs under DistributedDataParallel
    official_mix: bool = False  # accepts mix="official": a/‖g1‖ in place of a
    needs_model: bool = False  # needs the module (parameter names), not only its parameters
    in_alpha_figure: bool = True  # plotted in the error-vs-α figure beside standard and SAM
    scheme_alphas: tuple[float, float] | None = None  # (lo, hi]: the α that make its table scheme; None: all
    options: dict = field(default_factory=dict)  # its own settings and their defaults

    def __post_init__(self):
        if (self.step is Step.TWO_PASSES) != (self.perturbation is not None and self.mix is not None):
            raise ValueError(f"variant {self.name!r}: two passes need a perturbation and a mix, other steps neither")

    @property
    def passes(self) -> int:
        """Forward-backward passes per step (double backprop: one, differentiated twice)."""
        return 2 if self.step is Step.TWO_PASSES else 1

    @property
    def summary(self) -> str:
        """One line for --help."""
        theta = f"θ' = {self.theta_prime}, " if self.step is Step.TWO_PASSES else ""
        return f"{self.about}: {theta}g = {self.g}"

    def step_at(self, alpha: float) -> Step:
        """The step it takes at α: α = 0 is plain training, one pass, whatever the variant."""
        return self.step if alpha != 0 else Step.ONE_PASS

    def allows(self, alpha: float) -> bool:
        return math.isfinite(alpha) and (self.fixed_alpha is None or alpha == self.fixed_alpha)

    def alpha_rule(self) -> str:
        return "any finite α" if self.fixed_alpha is None else f"α = {self.fixed_alpha:g} only"


GNP_PENALTY = "∇[L + α·r·‖∇L‖]"
SQUARED_PENALTY = "∇[L + (α·r/2)·‖∇L‖²]"
NORMALIZED = "θ + r·g1/‖g1‖"
INTERPOLATED = "(1 − α)·g1 + α·g2"

REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("standard", "Standard", "plain training", "g1", "∇L", step=Step.ONE_PASS, fixed_alpha=0.0,
                official_mix=True),
        Variant("gnp", "GNP", "gradient norm penalty (Zhao et al. 2022)", INTERPOLATED, GNP_PENALTY,
                perturbation=normalized_ascent, mix=interpolation, theta_prime=NORMALIZED, official_mix=True,
                scheme_alphas=(0.0, 1.0)),
        Variant("sam", "SAM", "sharpness-aware minimization (gnp at α = 1)", "g2", "∇[L + r·‖∇L‖]",
                perturbation=normalized_ascent, mix=interpolation, theta_prime=NORMALIZED, fixed_alpha=1.0,
                alias_of="gnp"),
        Variant("fgr", "FGR", "forward-difference gradient regularization (Karakida et al. 2023)", INTERPOLATED,
                SQUARED_PENALTY, perturbation=forward_difference, mix=interpolation, theta_prime="θ + r·g1"),
        Variant("bgr", "BGR", "backward-difference gradient regularization (Karakida et al. 2023)",
                "(1 + α)·g1 − α·g2", SQUARED_PENALTY, perturbation=backward_difference, mix=extrapolation,
                theta_prime="θ − r·g1"),
        Variant("asam", "ASAM", "adaptive SAM (Kwon et al. 2021) at α = 1", INTERPOLATED,
                "∇[L + α·r·‖T·∇L‖], T held fixed", perturbation=adaptive_ascent, mix=interpolation,
                theta_prime="θ + r·T²g1/‖T·g1‖, T = |θ| + η on weights, 1 on biases", needs_model=True,
                options={"eta": 0.01}),
        Variant("db", "DB", "the exact gradient GNP approximates, by double backprop (one process)",
                "g1 + α·r·H·g1/‖g1‖", GNP_PENALTY + " exactly", step=Step.DOUBLE_BACKPROP, ddp=False,
                in_alpha_figure=False),
    )
}


def table() -> str:
    """The variants' maths as a markdown table."""

    def cell(text):
        return text.replace("|", "\\|")

    rows = ["| variant | what it is | step | θ' | g | g follows |", "|---|---|---|---|---|---|"]
    rows += [f"| `{v.name}` | {cell(v.about)} | {v.step} | {cell(v.theta_prime)} | {cell(v.g)} | {cell(v.follows)} |"
             for v in REGISTRY.values()]
    return "\n".join(rows)


def get(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def canonical(name: str, alpha: float) -> str:
    """The name a (variant, α) cell runs and is recorded under: α = 0 is standard, gnp at 1 is sam."""
    variant = REGISTRY.get(name)
    if variant is None:
        return name
    if alpha == 0 and variant.passes == 2:
        return "standard"
    for other in REGISTRY.values():
        if other.alias_of == name and other.fixed_alpha == alpha:
            return other.name
    return name


def scheme_label(name: str, alpha: float) -> str | None:
    """The table scheme of a result cell. A variant this registry does not know keeps its own name; None
    only for α outside the variant's scheme range (gnp with α < 0 or α > 1, which diverges)."""
    name = canonical(name, alpha)
    variant = REGISTRY.get(name)
    if variant is None:
        return name
    if variant.scheme_alphas is not None and not variant.scheme_alphas[0] < alpha <= variant.scheme_alphas[1]:
        return None
    return variant.label


def sweepable() -> list[str]:
    """The variants a grid's --variant takes: those with a free α (standard and SAM come from α = 0, 1)."""
    return [v.name for v in REGISTRY.values() if v.fixed_alpha is None]


def check_options(name: str, options: dict) -> dict:
    """The variant's settings with its defaults filled in; an unknown setting is a one-line error."""
    variant = get(name)
    unknown = sorted(set(options) - set(variant.options))
    if unknown:
        have = ", ".join(variant.options) or "none"
        raise UserError(f"variant {name!r} has no option {unknown[0]!r} (its options: {have})")
    return {**variant.options, **options}


if __name__ == "__main__":
    print(table())
