"""A minimal example agent: reads its prompt, reports progress through its own Agent status."""
