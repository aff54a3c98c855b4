"""Built-in demo models: random weights in a real architecture, a real tokenizer, a chat template."""
