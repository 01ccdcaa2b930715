"""Drop-ins for other trainers: ``asymgrpo.integrations.trl`` (TRL's GRPOTrainer) and
``asymgrpo.integrations.verl`` (verl's advantage-estimator and policy-loss registries).

Each module imports its trainer library, so import the one you use; this package imports neither.
"""
