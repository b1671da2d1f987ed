"""The web UI: gradio Blocks mounted in the server's own FastAPI app, so it shares the models, the checks and
the queue with the API. It works offline: analytics off, the theme's fonts are system ones, nothing is fetched
from outside (tests/server/test_browser.py checks every request the page makes)."""
from __future__ import annotations

import os

# Read by gradio when it is imported: no usage reports leave the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from noisecraft.server.ui.blocks import build_ui, mount_ui  # noqa: E402

__all__ = ["build_ui", "mount_ui"]
