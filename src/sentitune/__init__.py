"""sentitune: fine-tune BERT for sentiment and measure what full fine-tuning buys over LoRA,
a frozen backbone and TF-IDF."""

__version__ = "0.1.0"
