"""`python -m latentwire.trainer ...` = `latentwire train ...` (for torchrun / accelerate launch)."""

from latentwire.cli import app

if __name__ == "__main__":
    app(["train", *__import__("sys").argv[1:]])
