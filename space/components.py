"""Input components that accept only files uploaded to this server.

Why: Gradio downloads a file input given as a URL inside the worker slot, with no size limit, before our code
runs, and copies any server path it is given.
"""

from __future__ import annotations

import logging

import gradio as gr
from gradio import utils as gradio_utils
from gradio_client import utils as client_utils

from space.admission import ONLY_UPLOADS

LOG = logging.getLogger("defect_xai")


class UploadedOnly:
    """Mixin for file-taking input components: a URL, a data: URL or a path outside Gradio's upload cache is
    refused before Gradio would download or copy it (this hook runs for every route, before preprocessing).
    Input components only: Gradio calls the same hook on outputs."""

    def _gradio_component(self) -> type:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))

    def get_block_name(self) -> str:  # the page renders it with its Gradio parent's Svelte component
        return self._gradio_component().__name__.lower()

    def get_block_class(self) -> str:
        return self._gradio_component().__name__.lower()

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        path = None if url_or_file_path is None else str(url_or_file_path)
        if path is not None and (client_utils.is_http_url_like(path) or path.startswith("data:")
                                 or not gradio_utils.is_in_or_equal(path, self.GRADIO_CACHE)):
            raise gr.Error(ONLY_UPLOADS, print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class UploadedFile(UploadedOnly, gr.File):
    """gr.File that takes only uploaded files."""


class UploadedImage(UploadedOnly, gr.Image):
    """gr.Image that takes only uploaded files."""


def demo_cache_folder() -> str:
    """Where Gradio keeps uploads and returned files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return gradio_utils.get_upload_folder()
