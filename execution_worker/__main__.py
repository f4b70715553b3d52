"""`python -m execution_worker ...` is `tether worker ...`."""

from execution_worker.cli import worker

if __name__ == "__main__":
    worker(prog_name="python -m execution_worker")
