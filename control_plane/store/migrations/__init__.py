"""Alembic migrations of the control plane's tables (run them with `tether db upgrade`)."""
