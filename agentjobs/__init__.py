"""agentjobs: run unattended AI coding agent jobs declared in files."""

__version__ = "0.1.0"
