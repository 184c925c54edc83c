"""Chat-formatted data: SFT dialogues, the chat template and their rules."""
