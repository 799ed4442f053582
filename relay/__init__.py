"""mailroot: a mail relay built around the IIS mailroot folders."""
