"""Report text: sections, sentences, entities, labels, knowledge prompts and tokenizers."""
