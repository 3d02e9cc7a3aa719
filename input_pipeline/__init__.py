"""Data: dataset layouts, synthetic writers, recipes, TFDS slice records, Grain pipeline."""
