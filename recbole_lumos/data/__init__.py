"""Data: sources (download + convert to atomic files), atomic-file checks, the per-user partition."""
