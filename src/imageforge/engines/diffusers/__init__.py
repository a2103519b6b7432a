"""Local generation with diffusers model folders (the `local` extra).

The engine lives in `engines/diffusers/engine.py`; this package imports nothing else, so that
`settings.py` reads `config.py` without loading the engine, and nothing here imports torch
or diffusers until the engine loads a model on its own thread.
"""
