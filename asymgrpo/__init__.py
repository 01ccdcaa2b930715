"""asymgrpo: a thin AsymGRPO trainer with vLLM rollouts, built on asymgrpo_kernels.

Entry points: ``asymgrpo train`` / ``asymgrpo eval`` (see ``asymgrpo.cli``), or
``asymgrpo.trainer.train(TrainConfig(...))`` from Python.
"""
