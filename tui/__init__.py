"""The mailroot operator console (Textual)."""
