"""The committed checkpoints (`default`, `three`), installed as package data of `latentwire.checkpoints`.

A package so that importlib.resources finds them in a wheel install as in a checkout (pyproject's package-dir
maps this folder under `latentwire.`); `latentwire.checkpoint.DEFAULT_CKPT` resolves here. No code.
"""
