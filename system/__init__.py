"""The whole wire in one process (`pipeline.py`): what eval, calibrate, the bench and the trainer run."""
