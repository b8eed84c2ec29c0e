"""`python -m prefdata` runs the CLI (with the `__main__` guard vLLM's spawned engine process needs)."""

from prefdata.cli import app

if __name__ == "__main__":
    app()
