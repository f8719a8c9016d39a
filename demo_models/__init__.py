"""The bundled demo checkpoints, one directory each (see `model_core.recipes`)."""
