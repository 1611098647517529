"""Which pass of a two-pass step is running, for layers whose backward depends on it.

The official code's shake regularizations (Shake-Shake, ShakeDrop) scale the backward pass by gates drawn
apart from the forward ones, except in the first pass of a regularized step, which backpropagates through
the forward gates (its `true_gradient`): g1 is then the true gradient of the network the forward pass
computed, and the perturbation follows it. gnp.optim marks that pass; such layers read `true_gradient()`
when they run forward.
"""

import contextlib
import threading

_state = threading.local()


def true_gradient() -> bool:
    """True inside the first pass of a two-pass (regularized) step."""
    return getattr(_state, "true_gradient", False)


@contextlib.contextmanager
def first_of_two():
    """Mark the first pass of a two-pass step (gnp.optim enters it around the first closure call)."""
    before = true_gradient()
    _state.true_gradient = True
    try:
        yield
    finally:
        _state.true_gradient = before
