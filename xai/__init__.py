"""defect-xai: explainable visual inspection (anomaly detection + explanation suite)."""

__version__ = "0.1.0"
