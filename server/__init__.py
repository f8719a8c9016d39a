"""kvserve server (FastAPI front end, engine): lands with issues 4-5."""
