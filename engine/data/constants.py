"""Constants that data, evaluation and recipe code all need: here, so none of them imports another for them."""

IGNORE = -100  # the label of a token the loss skips (prompts, padding), as transformers and TRL expect

# near-duplicate detection (MinHash LSH): signature width, characters per shingle, and the widest shingle
# the vectorised hashing reads as one 8-byte word
DEFAULT_NUM_PERM, DEFAULT_SHINGLE, MAX_SHINGLE = 128, 5, 8
