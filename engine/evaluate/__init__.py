"""Evaluation: what a model scores (perplexity, rewards, answers), each stage evaluated and compared with the
deployment gates, answer scorers, confidence intervals, and the pictures a person reads."""
