"""Engine test helpers: a small shapes dataset and configs that train the stand-in model."""

from __future__ import annotations

import pytest

from refimpl.data import write_shapes_dataset
from refimpl.engine.train import TrainConfig

STANDIN = "tests.engine.standin:build"


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, train=6, val=3, seed=0)
    return out


@pytest.fixture
def make_config(shapes_data, tmp_path):
    def make(out="run", **kw) -> TrainConfig:
        defaults = dict(
            data=str(shapes_data), out=str(tmp_path / out), model=STANDIN, iters=8,
            batch_size=2, lr=0.05, warmup_iters=3, log_every=1, progress=False, threads=1,
        )  # fmt: skip
        return TrainConfig(**{**defaults, **kw})

    return make
