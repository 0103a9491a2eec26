"""reid: text-to-image person re-identification with identity / clothing disentanglement."""

__version__ = "0.1.0"
