"""The gradient-regularization variants: one table that every part of gnp-ray reads (torch-free).

The optimizer (gnp.optim) finds each variant's perturbation and mix by name here; the config validation,
the command lines of `gnp.train` and `jobs.grid`, and `analysis` (table labels, the α figure) read the
rest. Adding a variant is one `Variant(...)` below, its step functions in gnp.optim, and its test.

Every variant takes the same (α, r) pair. α = 0 makes any two-pass variant plain training (one pass), so
such a cell is run and reported as `standard`; a variant that is another one at a fixed α (SAM is GNP at
α = 1) is named for that α.
"""

import math
from dataclasses import dataclass, field

from gnp.errors import UserError


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the scheme's name in result tables
    summary: str  # one line for --help
    passes: int = 2  # forward-backward passes per step (db: one, differentiated twice)
    fixed_alpha: float | None = None  # the only α it takes (standard 0, sam 1); None: any finite α
    alias_of: str | None = None  # the variant it equals at fixed_alpha (sam is gnp at α = 1)
    ddp: bool = True  # runs under DistributedDataParallel
    official_mix: bool = False  # accepts mix="official": (1 − α)·g1/‖g1‖ + α·g2
    needs_model: bool = False  # needs the module (parameter names), not only its parameters
    in_alpha_figure: bool = True  # plotted in the error-vs-α figure beside standard and SAM
    scheme_alphas: tuple[float, float] | None = None  # (lo, hi]: the α that make its table scheme; None: all
    options: dict = field(default_factory=dict)  # its own settings and their defaults

    def allows(self, alpha: float) -> bool:
        return math.isfinite(alpha) and (self.fixed_alpha is None or alpha == self.fixed_alpha)

    def alpha_rule(self) -> str:
        return "any finite α" if self.fixed_alpha is None else f"α = {self.fixed_alpha:g} only"


REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("standard", "Standard", "plain training: g = g1, one pass", passes=1, fixed_alpha=0.0,
                official_mix=True),
        Variant("gnp", "GNP", "gradient norm penalty (Zhao et al. 2022): θ' = θ + r·g1/‖g1‖, "
                "g = (1 − α)·g1 + α·g2", official_mix=True, scheme_alphas=(0.0, 1.0)),
        Variant("sam", "SAM", "sharpness-aware minimization: gnp with α = 1, g = g2", fixed_alpha=1.0,
                alias_of="gnp"),
        Variant("fgr", "FGR", "forward-difference gradient regularization (Karakida et al. 2023): "
                "θ' = θ + r·g1, g = (1 − α)·g1 + α·g2"),
        Variant("bgr", "BGR", "backward-difference gradient regularization (Karakida et al. 2023): "
                "θ' = θ − r·g1, g = (1 + α)·g1 − α·g2"),
        Variant("asam", "ASAM", "adaptive SAM (Kwon et al. 2021): θ' = θ + r·T²g1/‖T·g1‖, T = |θ| + η "
                "on weights, g = (1 − α)·g1 + α·g2 (α = 1 is ASAM)", needs_model=True,
                options={"eta": 0.01}),
        Variant("db", "DB", "exact gradient of L + α·r·‖∇L‖ by double backprop (the reference for gnp)",
                passes=1, ddp=False, in_alpha_figure=False),
    )
}


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
