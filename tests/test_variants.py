"""The variant registry: a variant is one object the optimizer calls, its table is generated, its module
torch-free."""

import pathlib
import subprocess
import sys

import pytest
import torch
from test_optim import LR, batch, closure_for, float64, loss_of, mlp  # noqa: F401 (float64: a fixture)
from torch.func import grad

from gnp import variants
from gnp.optim import GNP
from gnp.variants import Step, Variant

README = pathlib.Path(__file__).parents[1] / "README.md"


def sign_ascent(first):
    """e = r·sign(g1): an L∞ ascent, a variant this registry does not have."""
    return first.mul([g.sign() for g in first.g1], first.r)


LINF = Variant("linf", "L∞", "ascent along sign(g1) (a test's variant)", "(1 − α)·g1 + α·g2", "—",
               perturbation=sign_ascent, mix=variants.interpolation, theta_prime="θ + r·sign(g1)")


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_a_new_variant_is_one_registered_object(monkeypatch, l2):
    monkeypatch.setitem(variants.REGISTRY, "linf", LINF)
    model, (x, y), alpha, r = mlp(), batch(), 0.4, 0.05
    f = loss_of(model, x, y, l2)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    g1 = grad(f)(theta)
    g2 = grad(f)({k: theta[k] + r * g1[k].sign() for k in theta})
    opt = GNP(model, alpha=alpha, r=r, variant="linf", weight_decay=l2, lr=LR)
    opt.step(closure_for(model, x, y))
    assert opt.regularized
    for k, p in model.named_parameters():
        expected = theta[k] - LR * ((1 - alpha) * g1[k] + alpha * g2[k])
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
    assert variants.sweepable()[-1] == "linf" and "| `linf` |" in variants.table()


@pytest.mark.parametrize("step,parts", [(Step.TWO_PASSES, {}), (Step.TWO_PASSES, {"mix": variants.interpolation}),
                                        (Step.ONE_PASS, {"perturbation": sign_ascent,
                                                         "mix": variants.interpolation})])
def test_a_two_pass_variant_has_a_perturbation_and_a_mix_and_no_other_does(step, parts):
    with pytest.raises(ValueError, match="two passes need a perturbation and a mix"):
        Variant("x", "X", "x", "g1", "∇L", step=step, **parts)


@pytest.mark.parametrize("variant,alpha,regularize,regularized", [
    ("standard", 0.0, True, False), ("gnp", 0.5, True, True), ("gnp", 0.5, False, False), ("db", 0.4, True, True),
    ("db", 0.0, True, False), ("bgr", 0.5, True, True)])
def test_regularized_tells_whether_the_step_was_more_than_one_pass(variant, alpha, regularize, regularized):
    model, (x, y) = mlp(), batch()
    calls = []
    closure = closure_for(model, x, y)
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, lr=LR)
    opt.step(lambda create_graph=False: (calls.append(create_graph), closure(create_graph))[1], regularize=regularize)
    assert opt.regularized is regularized
    passes = {Step.TWO_PASSES: [False, False], Step.DOUBLE_BACKPROP: [True]}
    assert calls == (passes[variants.REGISTRY[variant].step] if regularized else [False])


def test_the_readme_holds_the_generated_table():
    assert variants.table() in README.read_text(), "README's variants table is stale: paste `python -m gnp.variants`"


def test_the_help_line_is_made_of_the_tables_formulas():
    assert variants.REGISTRY["gnp"].summary == \
        "gradient norm penalty (Zhao et al. 2022): θ' = θ + r·g1/‖g1‖, g = (1 − α)·g1 + α·g2"
    assert variants.REGISTRY["db"].summary.endswith(": g = g1 + α·r·H·g1/‖g1‖")
    assert [v.passes for v in variants.REGISTRY.values()] == [1, 2, 2, 2, 2, 2, 1]


def test_the_registry_and_its_table_load_without_torch():
    code = "import sys, gnp.variants as v; v.table(); v.REGISTRY['gnp'].summary; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
