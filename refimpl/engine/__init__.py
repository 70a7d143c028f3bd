"""The engine: everything that runs the model (train, evaluate, predict, ablate, the demo).

Arrows go down only: the engine uses :mod:`refimpl.model` and :mod:`refimpl.data`, never the
other way round; the command line (:mod:`refimpl.__main__`) and the benchmarks use the engine.
"""
