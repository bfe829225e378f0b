"""Layer 1, the data and its file formats: the synthetic bird world (`world`, with its part names), the paper's
benchmark datasets (`datasets`), the few-shot image pool (`fewshot`) and the mask store (`maskstore`).
The JSON files beside them are package data (see README.md here)."""
