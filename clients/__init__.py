"""kvserve clients (HTTP only): lands with issue 6."""
