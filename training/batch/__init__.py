"""Batch inspection: what a batch reads (`sources`), one batch through the model (`pipeline`), the two engines
(`local`, `ray`), the results and files it writes (`results`, `report`), a whole run (`inspection`), and an
engineer's reviews from a CSV (`feedback`). The command line is `python -m training.inspect`."""
