"""`python -m tether.execution_worker ...` is `tether worker ...`."""

from tether.execution_worker.cli import worker

if __name__ == "__main__":
    worker(prog_name="python -m tether.execution_worker")
