"""Data formats, validation and batching. Modules here import no paddle at import time."""
