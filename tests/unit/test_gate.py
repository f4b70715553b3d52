"""The code gate's configuration keeps up with the code: import-linter wildcards replace whole
module names only, so the contract keeping the worker off the SDK's private modules names each
one, and a new private module must be added to it."""

from __future__ import annotations

import tomllib

from tests.helpers.processes import ROOT


def test_the_worker_contract_names_every_private_sdk_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["name"] == "the worker uses only the SDK's public modules"
    ]
    private = {f"tether.sdk.{path.stem}" for path in (ROOT / "sdk").glob("_*.py") if path.stem != "__init__"}
    missing = private - set(contract["forbidden_modules"])
    assert not missing, f"add {sorted(missing)} to the contract's forbidden_modules in pyproject.toml"
