"""Fixtures of the in-process fakes in tests/helpers/, for the integration tests that use them."""

from tests.helpers.codex_runtime import codex, mock_api  # noqa: F401
from tests.helpers.fake_control_plane import fake_cp, start_worker  # noqa: F401
from tests.helpers.fake_session_service import fake, threaded_agent_fake, threaded_fake  # noqa: F401
