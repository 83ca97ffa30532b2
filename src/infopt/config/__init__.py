"""Config schemas, validation and Hydra registration."""
