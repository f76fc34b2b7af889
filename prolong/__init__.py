"""prolong: train language models that use long contexts well (ProLong and UltraLong recipes)."""

__version__ = "0.1.0"
