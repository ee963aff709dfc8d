"""Tiny models run fastest on one thread: OpenMP start-up costs more than their kernels, and on
a 2-core CI machine two threads per process make the suite several times slower under load."""

import torch


def pytest_configure(config):
    torch.set_num_threads(1)
