"""Adapter files, exports (PEFT, plain LoRA, merged) and one-call loading."""
