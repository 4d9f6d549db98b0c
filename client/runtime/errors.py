"""The one exception type of the edge-export slice.

Every failure a user can cause (a folder that is not an adapter, a base model that cannot be
found, a package whose files were altered) raises :class:`ExportError` with the folder or file
in the message, so the command line can print it and exit without a traceback.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """An adapter cannot be exported, or an export package cannot be loaded; names the path."""
