"""Training glue: datasets, fitting, evaluation and publishing command lines."""
