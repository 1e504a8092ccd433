"""The frame receiver: shared-memory buffer pool, frame sources, ready/release bookkeeping."""
