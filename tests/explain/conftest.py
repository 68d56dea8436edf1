import pytest
import torch
from explain_fixtures import digits, train_small

from decalign.inference import run_inference
from decalign.train.reference import build_reference


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # Tiny models: thread start-up costs more than it saves, and the CI box has 2 busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_data():
    return digits()


@pytest.fixture(scope="session")
def trained(digits_data):
    return train_small(digits_data)


@pytest.fixture(scope="session")
def reference(trained, digits_data):
    model, card = trained
    return build_reference(model, card, digits_data.splits["train"], digits_data.splits["valid"])


@pytest.fixture(scope="session")
def test_result(trained, digits_data, reference):
    model, card = trained
    return run_inference(model, digits_data.splits["test"], task=card.task, prototypes=reference.prototypes)
