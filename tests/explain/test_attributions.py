import numpy as np
import pytest
import torch

from decalign.explain import integrated_gradients
from decalign.explain.counterfactual import sample_inputs


@pytest.mark.parametrize("baseline", ["zeros", "training_mean"])
def test_completeness(trained, digits_data, reference, baseline):
    model, _ = trained
    ig = integrated_gradients(model, digits_data.splits["test"], 3, steps=64, baseline=baseline,
                              reference=reference)
    diff = ig.output - ig.baseline_output
    assert abs(ig.total - diff) <= 1e-2 * abs(diff)
    assert ig.completeness_gap == pytest.approx(ig.total - diff)


def test_output_is_the_models_logit(trained, digits_data):
    model, _ = trained
    split = digits_data.splits["test"]
    ig = integrated_gradients(model, split, 1, target=7, steps=8)
    inputs, _ = sample_inputs(split, 1)
    with torch.no_grad():
        assert ig.output == pytest.approx(float(model(inputs).prediction[0, 7]), abs=1e-4)
        zeros = {m: torch.zeros_like(v) for m, v in inputs.items()}
        assert ig.baseline_output == pytest.approx(float(model(zeros).prediction[0, 7]), abs=1e-4)


def test_matches_captum_riemann(trained, digits_data):
    # Independent implementation: Captum's IntegratedGradients with a trapezoid Riemann sum.
    import copy

    from captum.attr import IntegratedGradients
    model, _ = trained
    net = copy.deepcopy(model).double().eval()
    split = digits_data.splits["test"]
    names = list(split.features)
    ig = integrated_gradients(model, split, 3, target=2, steps=64)
    inputs, _ = sample_inputs(split, 3, dtype=torch.float64)
    forward = lambda *xs: net(dict(zip(names, xs))).prediction
    theirs = IntegratedGradients(forward).attribute(tuple(inputs[m] for m in names), target=2, n_steps=600,
                                                    method="riemann_trapezoid")
    scale = max(np.abs(a).max() for a in ig.attributions.values())
    for m, a in zip(names, theirs):
        np.testing.assert_allclose(ig.attributions[m], a[0].numpy(), atol=2e-2 * scale)


def test_bad_baseline(trained, digits_data):
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(trained[0], digits_data.splits["test"], 0, baseline="noise")
    with pytest.raises(ValueError, match="reference"):
        integrated_gradients(trained[0], digits_data.splits["test"], 0, baseline="training_mean")
